# Copyright 2026 flashvla_ros contributors
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.


"""Every relative link in README.md and docs/ names an existing file, and its #anchor a heading."""

from collections.abc import Iterator
from pathlib import Path
import re

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / 'README.md', *sorted((ROOT / 'docs').rglob('*.md'))]
LINK = re.compile(r'!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+"[^"]*")?\)')


def unfenced(text: str) -> str:
    """Return the text without fenced code blocks."""
    return re.sub(r'^(```|~~~).*?^\1', '', text, flags=re.M | re.S)


def prose(text: str) -> str:
    """Return the text without code blocks and inline code (links there are not links)."""
    return re.sub(r'`[^`\n]*`', '', unfenced(text))


def anchors(page: Path) -> Iterator[str]:
    """Return the anchors GitHub gives the headings of a page (duplicates get -1, -2, ...)."""
    seen: dict[str, int] = {}
    for line in unfenced(page.read_text()).splitlines():
        m = re.match(r'#{1,6}\s+(.*?)\s*#*\s*$', line)
        if not m:
            continue
        heading = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', m.group(1))  # a link: its text
        slug = re.sub(r'[^\w\- ]', '', heading.replace('`', '').lower()).replace(' ', '-')
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        yield slug if n == 0 else f'{slug}-{n}'


def links(page: Path) -> Iterator[str]:
    """Return the page's link targets that are not URLs (http:, https:, mailto:)."""
    for m in LINK.finditer(prose(page.read_text())):
        target = m.group(1)
        if re.match(r'[a-z][a-z0-9+.-]*:', target, re.I):
            continue
        yield target


@pytest.mark.parametrize('page', PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for target in links(page):
        path, _, anchor = target.partition('#')
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f'{target}: no such file')
        elif not dest.resolve().is_relative_to(ROOT):
            broken.append(f'{target}: outside the repository')
        elif anchor and dest.suffix == '.md' and anchor not in set(anchors(dest)):
            broken.append(f'{target}: no heading #{anchor} in {dest.relative_to(ROOT)}')
    assert not broken, f'{page.relative_to(ROOT)}: ' + '; '.join(broken)


def test_the_check_sees_links_and_headings(tmp_path):
    page = tmp_path / 'a.md'
    page.write_text('# Top\n\n## The `x` part (y)\n\n## Top\n\n[ok](a.md#the-x-part-y) '
                    '![i](b.png) [web](https://example.org) `[code](gone.md)`\n\n'
                    '```\n[fenced](gone.md)\n```\n')
    assert list(links(page)) == ['a.md#the-x-part-y', 'b.png']
    assert set(anchors(page)) == {'top', 'the-x-part-y', 'top-1'}
