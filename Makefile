# Set-up, run, test, lint and benchmark fastproxy. Every target installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BUILT := $(VENV)/.compiled
# The modules setup.py compiles with mypyc: editing one means rebuilding.
HOT_SOURCES := $(shell grep -o '"fastproxy/[^"]*\.py"' setup.py | tr -d '"')
APT_GET := DEBIAN_FRONTEND=noninteractive apt-get
ARGS ?=

.PHONY: install pure run test lint bench bench-twohop system-deps clean

install: $(BUILT)

$(STAMP): pyproject.toml setup.py
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { \
		$(APT_GET) update -qq && $(APT_GET) install -y -qq python3-venv python3-pip; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	FASTPROXY_PURE_PYTHON=1 $(BIN)/pip install -q -e '.[test]'
	@touch $(STAMP)

# Recompile the hot path after its sources changed (dependencies are already in place).
$(BUILT): $(STAMP) $(HOT_SOURCES)
	$(BIN)/pip install -q --no-deps -e .
	@touch $(BUILT)

# The same package without its compiled modules, for comparison; `make install` restores them.
pure: $(STAMP)
	find fastproxy -name '*.so' -delete
	rm -f $(BUILT)

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
	$(BIN)/ruff check fastproxy tests benchmarks setup.py
	$(BIN)/ruff format --check fastproxy tests benchmarks setup.py
	$(BIN)/mypy fastproxy

bench: install
	$(BIN)/python benchmarks/run.py $(ARGS)

bench-twohop: install
	$(BIN)/python benchmarks/twohop.py $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache *__mypyc*.so
	find fastproxy -name '*.so' -delete
