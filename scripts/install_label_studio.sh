#!/usr/bin/env bash
# Install Label Studio into its OWN virtualenv, exactly as requirements/label-studio.txt pins it
# (every package, with hashes; it has its own label-studio-sdk, which must not leak into the
# project's environment). Prints the venv's path on stdout (last line).
#
# The venv's folder is named after the lock's hash, and holds that hash in a marker written only
# once the install is complete and checked: a changed lock gets a new venv, a stale or half-made
# one is never reused. A second run only checks (well under a second).
#
#   LS_VENV      where to put the venv (default: ${XMODAL_CACHE_DIR:-~/.cache/xmodal}/ls-venv-<hash>)
#   LS_PYTHON    interpreter for the venv (default: python3)
#   --print-venv print where the venv is (or would be) and install nothing
#
# Note: we check the installed version by importing the package. `label-studio --version` is NOT
# a safe probe in 1.23.2: after printing the version it goes on to start a server on 0.0.0.0:8080
# with ~/.local/share/label-studio as its data dir.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
lock="$root/requirements/label-studio.txt"
# the first 12 hex digits of the lock's sha256, as xmodal.demo.label_studio.ls_venv_dir() computes it
lock_hash="$(sha256sum "$lock" | cut -c1-12)"
LS_VENV="${LS_VENV:-${XMODAL_CACHE_DIR:-$HOME/.cache/xmodal}/ls-venv-$lock_hash}"
LS_PYTHON="${LS_PYTHON:-python3}"
marker="$LS_VENV/.xmodal-lock"
if [[ "${1:-}" == "--print-venv" ]]; then
    echo "$LS_VENV"
    exit 0
fi
wanted="$(sed -n 's/^label-studio==\([^ ]*\).*/\1/p' "$lock")"

installed_version() {
    "$LS_VENV/bin/python" -c 'import label_studio; print(label_studio.__version__)' 2>/dev/null || true
}

mkdir -p "$(dirname "$LS_VENV")"
exec 9>"$LS_VENV.install-lock"   # two installs at once (two CI runs) take turns
flock 9
if [[ -x "$LS_VENV/bin/label-studio" && "$(cat "$marker" 2>/dev/null)" == "$lock_hash" ]]; then
    echo "label-studio $wanted (lock $lock_hash) already installed in $LS_VENV" >&2
else
    uv="$(bash "$root/scripts/uv.sh")"
    export UV_PYTHON_DOWNLOADS=never   # the venv uses this machine's Python; uv never fetches one
    start=$SECONDS
    echo "==> [label-studio 1/3] a new virtualenv $LS_VENV for lock $lock_hash" >&2
    rm -rf "$LS_VENV"
    "$uv" venv --quiet --python "$LS_PYTHON" "$LS_VENV" >&2
    echo "==> [label-studio 2/3] installing exactly requirements/label-studio.txt" \
         "($(grep -c '^[A-Za-z0-9].*==' "$lock") packages, hashes checked; ~30 s with a fresh cache)" >&2
    "$uv" pip sync --python "$LS_VENV/bin/python" --require-hashes "$lock" >&2
    echo "==> [label-studio 3/3] checking it" >&2
    got="$(installed_version)"
    if [[ "$got" != "$wanted" ]]; then
        echo "error: expected label-studio $wanted in $LS_VENV, found '${got:-nothing}'" >&2
        exit 1
    fi
    echo "$lock_hash" > "$marker"
    echo "==> label-studio $got installed in $((SECONDS - start)) s" >&2
fi
echo "$LS_VENV"
