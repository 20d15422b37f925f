# What the README's quick start runs: `make demo`, `make test`, `make bench`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
DATA   ?= synthetic
LABELS ?= 30
PORT   ?=
# the pinned uv (requirements/uv.txt), installed once by scripts/uv.sh; evaluated where used
UV      = $(shell bash scripts/uv.sh)
# uv uses this machine's Python and never downloads one
export UV_PYTHON_DOWNLOADS := never

.PHONY: venv lock upgrade test test-deps lint test-fast demo bench clean

venv: $(VENV)/.installed

# Exactly uv.lock (every package pinned, with hashes): reinstalled when the lock or pyproject.toml
# changes. `--locked` refuses a lock that no longer matches pyproject.toml (run `make lock`).
$(VENV)/.installed: pyproject.toml uv.lock
	@echo "==> [venv 1/2] uv (pinned in requirements/uv.txt; installed once by scripts/uv.sh)"
	@bash scripts/uv.sh >/dev/null
	@echo "==> [venv 2/2] installing exactly uv.lock into $(VENV) with $(PYTHON) (first time: ~20 s, ~1.3 GB)"
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --locked --extra test --python $(PYTHON)
	touch $@
	@echo "==> $(VENV) is ready"

# Re-resolve both locks after a change to pyproject.toml or requirements/label-studio.in; every
# pin the change does not touch stays. `make upgrade` moves every pin to the newest release the
# ranges allow; one package: `$$(bash scripts/uv.sh) lock --upgrade-package NAME`. Then `make test`.
LS_COMPILE = pip compile requirements/label-studio.in --universal --python-version 3.11 \
             --generate-hashes --quiet -o requirements/label-studio.txt
lock:
	$(UV) lock
	$(UV) $(LS_COMPILE)

upgrade:
	$(UV) lock --upgrade
	$(UV) $(LS_COMPILE) --upgrade

# What the end-to-end and browser tests need besides the venv: Label Studio in its own virtualenv
# (requirements/label-studio.txt) and Chromium + ChromeDriver. Idempotent: a second run only checks.
test-deps:
	@bash scripts/install_test_deps.sh

test: venv test-deps lint
	$(BIN)/python -m pytest

# ruff with the rules in pyproject.toml (pyflakes, pycodestyle, isort, pyupgrade)
lint: venv
	$(BIN)/ruff check .

# The unit and service tests: no Label Studio, no browser, no real weights or data, no fault injection.
test-fast: venv lint
	$(BIN)/python -m pytest -m "not e2e and not browser and not slow and not faults and not growth"

demo: venv
	$(BIN)/xmodal demo --data $(DATA) --labels $(LABELS) --out reports $(if $(PORT),--port $(PORT))

bench: venv
	$(BIN)/xmodal bench

clean:
	rm -rf reports .pytest_cache
