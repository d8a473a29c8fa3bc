# Two commands on a fresh machine:
#   make demo   set up .venv and run the main job
#   make test   set up .venv and run the whole suite (what .ci/run calls)
#
# The venv is made from the system Python with --system-site-packages so that the ament
# linters (Debian/ROS packages, not on PyPI) are importable, as they are in a ROS workspace.

SYS_PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || echo python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
APT_PACKAGES := python3-venv python3-ament-flake8 python3-ament-pep257 python3-ament-copyright

.PHONY: test demo lint clean

$(STAMP): setup.py constraints.txt
	@if ! $(SYS_PYTHON) -c 'import venv, ensurepip, ament_flake8, ament_pep257, ament_copyright' 2>/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo '== installing $(APT_PACKAGES)'; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES); \
	  else \
	    echo 'note: install $(APT_PACKAGES) (or source a ROS setup) for the ament linter tests'; \
	  fi; \
	fi
	$(SYS_PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q test

demo: $(STAMP)
	$(VENV)/bin/flashvla-demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
