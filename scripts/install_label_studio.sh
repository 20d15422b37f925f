#!/usr/bin/env bash
# Install Label Studio into its OWN virtualenv (it pins its own label-studio-sdk, which must not
# leak into the project's environment). Idempotent: does nothing if the venv already holds the
# wanted version. Prints the venv path on stdout (last line).
#
#   LS_VENV      where to put the venv      (default: $HOME/.cache/xmodal/ls-venv)
#   LS_VERSION   label-studio version        (default: 1.23.2)
#   LS_PYTHON    interpreter for the venv    (default: python3)
#
# Note: we check the installed version by importing the package. `label-studio --version` is NOT
# a safe probe in 1.23.2: after printing the version it goes on to start a server on 0.0.0.0:8080
# with ~/.local/share/label-studio as its data dir.
set -euo pipefail

LS_VENV="${LS_VENV:-$HOME/.cache/xmodal/ls-venv}"
LS_VERSION="${LS_VERSION:-1.23.2}"
LS_PYTHON="${LS_PYTHON:-python3}"

installed_version() {
    "$LS_VENV/bin/python" -c 'import label_studio; print(label_studio.__version__)' 2>/dev/null || true
}

if [[ -x "$LS_VENV/bin/label-studio" && "$(installed_version)" == "$LS_VERSION" ]]; then
    echo "label-studio $LS_VERSION already installed in $LS_VENV" >&2
else
    # ~3 min measured on a 2-core machine with a fresh pip cache (2 min 54 s), ~1 GB
    echo "installing label-studio==$LS_VERSION into $LS_VENV (~3 min, ~1 GB; pip's progress below)" >&2
    mkdir -p "$(dirname "$LS_VENV")"
    if [[ ! -x "$LS_VENV/bin/python" ]]; then
        echo "==> [label-studio 1/3] creating the virtualenv $LS_VENV" >&2
        "$LS_PYTHON" -m venv "$LS_VENV"
    fi
    echo "==> [label-studio 2/3] upgrading pip in $LS_VENV" >&2
    "$LS_VENV/bin/python" -m pip install --upgrade pip >&2
    echo "==> [label-studio 3/3] installing label-studio==$LS_VERSION" >&2
    progress=raw; [[ -t 2 ]] && progress=on
    "$LS_VENV/bin/python" -m pip install --progress-bar "$progress" "label-studio==$LS_VERSION" >&2
    got="$(installed_version)"
    if [[ "$got" != "$LS_VERSION" ]]; then
        echo "error: expected label-studio $LS_VERSION in $LS_VENV, found '${got:-nothing}'" >&2
        exit 1
    fi
fi
echo "$LS_VENV"
