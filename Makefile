# Set-up, run, test, lint and benchmark fastproxy. Every target installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_GET := DEBIAN_FRONTEND=noninteractive apt-get
ARGS ?=

.PHONY: install run test lint bench bench-twohop system-deps clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { \
		$(APT_GET) update -qq && $(APT_GET) install -y -qq python3-venv python3-pip; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@touch $(STAMP)

# Debian tools the tests and benchmarks drive; installed only when missing.
system-deps:
	@missing=""; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	command -v dnsmasq >/dev/null || [ -x /usr/sbin/dnsmasq ] || missing="$$missing dnsmasq-base"; \
	if [ -n "$$missing" ]; then \
		$(APT_GET) update -qq && $(APT_GET) install -y -qq $$missing; fi

run: install
	$(BIN)/fastproxy demo $(ARGS)

test: install system-deps
	$(BIN)/pytest -q $(ARGS)

lint: install
	$(BIN)/ruff check fastproxy tests benchmarks
	$(BIN)/ruff format --check fastproxy tests benchmarks
	$(BIN)/mypy fastproxy

bench: install
	$(BIN)/python benchmarks/run.py $(ARGS)

bench-twohop: install
	$(BIN)/python benchmarks/twohop.py $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
