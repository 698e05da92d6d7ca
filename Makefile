# Every target installs what it needs on a fresh machine: a virtual environment from
# pyproject.toml extras, and the Debian packages the tests use (redis-server, nftables).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: all install sysdeps lint test test-long bench drill build-check clean

all: test

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Debian packages used by the loopback tests; installed only where missing.
sysdeps:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || missing="$$missing nftables"; \
	if [ -n "$$missing" ]; then \
		if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
			echo "installing:$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
		else \
			echo "note: missing$$missing (tests that need them are skipped)"; \
		fi; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check superapp_sdk fallback_providers tests bench examples
	$(VENV)/bin/ruff format --check superapp_sdk fallback_providers tests bench examples
	$(VENV)/bin/mypy

test: $(STAMP) sysdeps lint
	$(PY) -m pytest -q -p no:cacheprovider

test-long: $(STAMP) sysdeps
	HYPOTHESIS_PROFILE=long SUPERAPP_CRASH_CYCLES=1000 $(PY) -m pytest -q -p no:cacheprovider --timeout=3600

bench: $(STAMP)
	$(PY) -m bench

drill: $(STAMP) sysdeps
	$(PY) -m superapp_sdk.cli drill

build-check: $(STAMP)
	rm -rf dist
	$(PY) -m build -q --outdir dist . >/dev/null
	$(VENV)/bin/twine check dist/*

clean:
	rm -rf $(VENV) dist build .pytest_cache .mypy_cache .ruff_cache .hypothesis
