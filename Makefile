# Two commands on a fresh machine:
#   make demo       set up .venv and run the main job (DEMO_ARGS='--view --record demo.mp4')
#   make test       set up .venv and run the default tier (what .ci/run calls): every test but
#                   the `slow` ones, and the Python 3.10 pins resolved (scripts/check_pins.sh)
#   make test-all   the whole suite, slow tier included, and the pins on 3.10, 3.12 and 3.13
#   make libero     add the optional LIBERO world to .venv (docs/LIBERO.md)
#   make test-libero  that, and the LIBERO tier (-m libero: the world, the expert, the node)
#
# The venv is made from the system Python with --system-site-packages so that the ament
# linters (Debian/ROS packages, not on PyPI) are importable, as they are in a ROS workspace.

SYS_PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || echo python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
APT_PACKAGES := python3-venv python3-ament-flake8 python3-ament-pep257 python3-ament-copyright

PIN_PYTHONS ?= 3.10
ALL_PIN_PYTHONS ?= 3.10 3.12 3.13

.PHONY: test test-all test-libero libero check-pins demo lint clean
LIBERO_STAMP := $(VENV)/.libero

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

# The pins check (a pip dry run, about a minute of CPU) runs beside the tests at the lowest
# priority, so that it adds little to the wall-clock time and never slows a timed test.
test: $(STAMP)
	@nice -n 19 scripts/check_pins.sh $(PIN_PYTHONS) > $(VENV)/check-pins.log 2>&1 & pins=$$!; \
	$(PY) -m pytest -q -m 'not slow and not libero' test; tests=$$?; \
	wait $$pins; pinned=$$?; cat $(VENV)/check-pins.log; \
	exit $$(( tests || pinned ))

test-all: $(STAMP)
	scripts/check_pins.sh $(ALL_PIN_PYTHONS)
	$(PY) -m pytest -q test

$(LIBERO_STAMP): $(STAMP)
	scripts/install_libero.sh $(PY)
	touch $(LIBERO_STAMP)

libero: $(LIBERO_STAMP)

test-libero: $(LIBERO_STAMP)
	$(PY) -m pytest -q -m libero test

check-pins:
	scripts/check_pins.sh $(ALL_PIN_PYTHONS)

demo: $(STAMP)
	$(VENV)/bin/flashvla-demo $(DEMO_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
