# The two commands of the README: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
DATA   ?= synthetic
LABELS ?= 30

.PHONY: venv test test-fast demo bench eval clean

venv: $(VENV)/.installed

# Reinstall only when the dependencies change.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

test: venv
	$(BIN)/python -m pytest

# Everything but the end-to-end tests against a real Label Studio server.
test-fast: venv
	$(BIN)/python -m pytest -m "not e2e and not slow"

demo: venv
	$(BIN)/xmodal demo --data $(DATA) --labels $(LABELS) --out reports

bench: venv
	$(BIN)/xmodal bench

clean:
	rm -rf reports .pytest_cache
