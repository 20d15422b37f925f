#!/usr/bin/env bash
# What `make test` needs besides the project's venv, installed only when missing (idempotent; a
# second run only checks, well under a second):
#   - Label Studio in its own virtualenv (scripts/install_label_studio.sh; ~3 min and ~1 GB the
#     first time) for the end-to-end tests (`-m e2e`);
#   - Chromium + ChromeDriver (Debian packages) for the browser test (`-m browser`) and the report's
#     screenshot check. Installing them needs apt-get as root; otherwise this says what to run and
#     those tests skip with a message.
# Set XMODAL_SKIP_TEST_DEPS=1 to install nothing (the tests that need these then skip).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${XMODAL_SKIP_TEST_DEPS:-}" == 1 ]]; then
    echo "==> test deps: XMODAL_SKIP_TEST_DEPS=1, installing nothing (Label Studio / browser tests may skip)"
    exit 0
fi

echo "==> test deps: Label Studio (scripts/install_label_studio.sh)"
bash scripts/install_label_studio.sh >/dev/null

if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    echo "==> test deps: chromium and chromedriver found ($(command -v chromium))"
elif command -v apt-get >/dev/null && [[ "$(id -u)" == 0 ]]; then
    echo "==> test deps: installing chromium and chromium-driver with apt-get (~1 min)"
    apt-get install -y -q chromium chromium-driver \
        || { apt-get update -q && apt-get install -y -q chromium chromium-driver; }
else
    echo "==> test deps: chromium/chromedriver missing and apt-get as root unavailable:" \
         "the browser tests will skip. Install them with: sudo apt-get install chromium chromium-driver"
fi
