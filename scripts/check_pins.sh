#!/usr/bin/env bash
# Prove that constraints.txt resolves on other Python versions than the venv's:
#   scripts/check_pins.sh 3.10 [3.12 ...]
# For each version it asks that interpreter's pip for the whole install (`-e .[test]` under the
# constraints) as a dry run: pip resolves every pin against the index for that Python, and
# installs nothing. A version with no interpreter on this machine is skipped, and says so.
set -uo pipefail
cd "$(dirname "$0")/.."

find_python() {
  local v=$1 py
  for py in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$v".*/bin/python "$(command -v "python$v")"; do
    if [ -x "$py" ] && "$py" -c "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$v'.split('.'))))" 2>/dev/null; then
      echo "$py"
      return 0
    fi
  done
  return 1
}

status=0
for v in "$@"; do
  if ! py=$(find_python "$v"); then
    echo "check-pins: SKIPPED Python $v: no python$v interpreter on this machine"
    continue
  fi
  start=$SECONDS
  # This machine's pip.conf names index folders that may be absent: drop those warnings only.
  if out=$("$py" -m pip install --dry-run --ignore-installed --disable-pip-version-check \
           -c constraints.txt -e '.[test,libero]' 2>&1); then
    echo "check-pins: Python $v ($py): $(($(grep -o "Would install .*" <<<"$out" | wc -w) - 2)) packages" \
         "resolve under constraints.txt ($((SECONDS - start)) s)"
  else
    grep -v 'is ignored: it is neither a file nor a directory' <<<"$out" | tail -25
    echo "check-pins: FAILED on Python $v ($py)"
    status=1
  fi
done
exit $status
