# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint bench clean browser

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# PocketBase + the sample agent from pb_processes.json, logs in this terminal (Ctrl-C stops all).
demo: venv
	$(VENV)/bin/pbhost serve

# The dashboard's browser tests drive the system's Chromium (Playwright's own browser download
# cannot work offline): install it where we may (root with apt-get), else say how.
CHROMIUM_HINT := the dashboard tests need Chromium. Install it (Debian, as root): apt-get install -y chromium. Or point PBHOST_CHROMIUM at one.
browser:
	@if [ -n "$$PBHOST_CHROMIUM" ] || command -v chromium >/dev/null 2>&1 \
	    || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing chromium for the dashboard's browser tests (apt-get)"; \
	  { apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
	    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; }; } \
	  || { echo "$(CHROMIUM_HINT)" >&2; exit 1; }; \
	else echo "$(CHROMIUM_HINT)" >&2; exit 1; fi

# The whole test suite (real PocketBase, real processes, a real browser). Exit code 5 (no
# tests) is a failure.
test: venv browser
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

# Type check (mypy --strict over pbhost, tests and scripts: setup.cfg) and lint (ruff, rules in
# pyproject.toml); pinned versions, so results are stable.
lint: venv
	$(PY) -m mypy
	$(PY) -m ruff check pbhost tests scripts

# matplotlib (the `bench` extra) draws docs/performance-scale.png; a bench without it skips the plot.
bench: venv
	$(PY) -m pip install -q -e '.[bench]' || echo "matplotlib not installed: the plot is skipped"
	$(PY) scripts/bench.py $(if $(QUICK),--quick) $(if $(JSON),--json $(JSON))

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache pb_data
