# Two commands matter: `make run` and `make test`. Both build .venv from requirements.lock first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-fast bench lint lock clean sysdeps

$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Signalbox needs Python 3.11, found " + sys.version.split()[0]'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==0.13.9
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -r requirements.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	touch $(STAMP)

# Options for `signalbox up`: make run ARGS="--port 3005 --history-days 2"
run: $(STAMP)
	$(BIN)/signalbox up $(ARGS)

# Some tests need system programs Playwright/pip cannot fetch offline: the HTML-report test
# renders in headless Chromium, the protocol test talks through socat, the Postgres storage
# tests start a throwaway PostgreSQL server (Debian keeps pg_ctl in /usr/lib/postgresql/*/bin).
# Debian packages are installed here when missing and we may use apt; otherwise those tests
# say what to install. Each entry: the program that shows it is there, then its package.
SYSDEPS := chromium:chromium socat:socat pg_ctl:postgresql
sysdeps:
	@missing=""; for dep in $(SYSDEPS); do prog=$${dep%%:*}; pkg=$${dep#*:}; \
	  command -v $$prog >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/$$prog >/dev/null 2>&1 \
	    || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then SUDO=""; \
	  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo"; \
	  else echo "warning: missing$$missing; install them (apt-get install$$missing) or their tests skip/fail"; exit 0; fi; \
	  echo "installing$$missing for the report rendering, socket protocol and Postgres storage tests"; \
	  { $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; } \
	    || echo "warning: could not install$$missing; their tests skip or fail"; \
	fi

# Two workers (pytest-xdist): most end-to-end tests wait on daemons and minute closes, so two
# run side by side on a 2-core machine in about half the time. TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2
test: $(STAMP) sysdeps
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python -m bench

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Re-pin every dependency after editing pyproject.toml.
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --extra dev --generate-hashes --universal \
		--python-version 3.11 -o requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache
