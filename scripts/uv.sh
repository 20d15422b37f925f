#!/usr/bin/env bash
# Prints the path of the uv this repository installs with: the version pinned, with its hashes, in
# requirements/uv.txt. Installs it once (pip, ~5 s) into ${XMODAL_CACHE_DIR:-~/.cache/xmodal}/uv-<version>;
# afterwards it only checks. Used by the Makefile and scripts/install_label_studio.sh.
#
#   PYTHON   the interpreter whose pip installs uv (default: python3)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
req="$root/requirements/uv.txt"
version="$(sed -n 's/^uv==\([^ ]*\).*/\1/p' "$req")"
dir="${XMODAL_CACHE_DIR:-$HOME/.cache/xmodal}/uv-$version"

if [[ "$("$dir/bin/uv" --version 2>/dev/null)" != "uv $version"* ]]; then
    echo "==> uv $version: installing it once into $dir (pip, hashes checked)" >&2
    mkdir -p "$(dirname "$dir")"
    tmp="$(mktemp -d "$dir.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    # --target, not a venv: uv is one static binary, so the folder can be moved into place whole
    # (two installs at once each finish their own copy; the last rename wins, both are the same)
    "${PYTHON:-python3}" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps \
        --require-hashes --target "$tmp" -r "$req" >&2
    rm -rf "$dir" && mv "$tmp" "$dir"
fi
echo "$dir/bin/uv"
