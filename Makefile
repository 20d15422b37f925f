# What the README's quick start runs: `make demo`, `make test`, `make bench`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
DATA   ?= synthetic
LABELS ?= 30
PORT   ?=
# pip's progress: a live bar on a terminal, one line per step otherwise (CI logs, pipes)
PIP_PROGRESS ?= $(shell [ -t 2 ] && echo on || echo raw)

.PHONY: venv test test-deps test-fast demo bench clean

venv: $(VENV)/.installed

# Reinstall only when the dependencies change. Each step says what it does before it starts, and pip
# shows its own progress: the first install downloads ~1 GB (torch, onnxruntime, ...) and takes minutes.
$(VENV)/.installed: pyproject.toml
	@echo "==> [venv 1/3] creating the virtualenv $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)
	@echo "==> [venv 2/3] upgrading pip in $(VENV)"
	$(BIN)/python -m pip install --upgrade pip
	@echo "==> [venv 3/3] installing xmodal and its dependencies into $(VENV) (first time: a few minutes, ~1 GB)"
	$(BIN)/python -m pip install --progress-bar $(PIP_PROGRESS) -e '.[test]'
	touch $@
	@echo "==> $(VENV) is ready"

# What the end-to-end and browser tests need besides the venv: Label Studio in its own virtualenv
# and Chromium + ChromeDriver. Idempotent: a second run only checks (well under a second).
test-deps:
	@bash scripts/install_test_deps.sh

test: venv test-deps
	$(BIN)/python -m pytest

# Everything but the end-to-end tests against a real Label Studio server.
test-fast: venv
	$(BIN)/python -m pytest -m "not e2e and not slow"

demo: venv
	$(BIN)/xmodal demo --data $(DATA) --labels $(LABELS) --out reports $(if $(PORT),--port $(PORT))

bench: venv
	$(BIN)/xmodal bench

clean:
	rm -rf reports .pytest_cache
