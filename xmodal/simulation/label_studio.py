"""A Label Studio of this machine's own, for the demo and the tests: where it is installed (the venv
of scripts/install_label_studio.sh, named after its lock), installing it, and the environment it
runs with (an ML backend on 127.0.0.1 allowed, nothing sent out)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from xmodal.errors import ConfigError
from xmodal.simulation.processes import child_env

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "requirements" / "label-studio.txt"

# Label Studio's settings for a server on this machine that calls out to nothing (read by
# label_studio.core.utils.params.get_env with the LABEL_STUDIO_ prefix, which wins over the bare
# names). Measured with 1.23.2 (tests/test_locks.py starts one behind a proxy that records every
# outgoing connection): without the two DSNs its Sentry client reports to sentry.io whatever
# COLLECT_ANALYTICS says. The login page's tips are fetched by the server from GitHub when a browser
# shows that page (/heidi-tips); no setting of 1.23.2 turns that off.
QUIET_SETTINGS = {
    "LABEL_STUDIO_COLLECT_ANALYTICS": "false",     # usage events to tele.labelstud.io
    "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",  # PyPI asked for the newest version
    "LABEL_STUDIO_SENTRY_DSN": "",                 # server errors and traces to sentry.io
    "LABEL_STUDIO_FRONTEND_SENTRY_DSN": "",        # the pages' own error reports to sentry.io
}


def label_studio_env(data_dir: Path, document_root: Path | None = None) -> dict[str, str]:
    """The environment of a Label Studio started for this backend on this machine: its data in
    ``data_dir``, legacy tokens (a token chosen up front), an ML backend on 127.0.0.1 allowed,
    nothing sent out (:data:`QUIET_SETTINGS`), local files served from ``document_root``. The
    caller's own Label Studio settings (URL, key, host, port) do not leak into it."""
    env = child_env(
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
        # without it `--user-token` is refused (401 "legacy token authentication has been
        # disabled"); read when the organization is created, i.e. at init
        LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
        # both, else a backend on 127.0.0.1 is refused (403 "reserved network address")
        LABEL_STUDIO_ML_BLOCK_LOCAL_IP="false",
        LABEL_STUDIO_SSRF_PROTECTION_ENABLED="false",
        **QUIET_SETTINGS)
    if document_root is not None:
        env["LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED"] = "true"
        env["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"] = str(document_root)
    for key in ("LABEL_STUDIO_API_KEY", "LABEL_STUDIO_HOST", "LABEL_STUDIO_PORT", "LABEL_STUDIO_URL"):
        env.pop(key, None)
    return env


def ls_venv_dir() -> Path:
    """Where scripts/install_label_studio.sh puts Label Studio: ``$LS_VENV``, else a folder named
    after the first 12 hex digits of requirements/label-studio.txt's sha256 in the cache folder, so
    a changed lock never finds the venv of the old one."""
    if os.environ.get("LS_VENV"):
        return Path(os.environ["LS_VENV"])
    from xmodal.encoders.base import default_cache_dir

    digest = hashlib.sha256(LOCK.read_bytes()).hexdigest()[:12] if LOCK.is_file() else "unlocked"
    return default_cache_dir() / f"ls-venv-{digest}"


def find_label_studio() -> Path | None:
    """``$LABEL_STUDIO_BIN``, ``label-studio`` on PATH, or the venv of scripts/install_label_studio.sh
    (only once its install finished: the script writes the lock's hash into it last)."""
    explicit = os.environ.get("LABEL_STUDIO_BIN")
    if explicit:
        return Path(explicit) if os.access(explicit, os.X_OK) else None
    on_path = shutil.which("label-studio")
    if on_path:
        return Path(on_path)
    venv = ls_venv_dir()
    cand = venv / "bin" / "label-studio"
    return cand if os.access(cand, os.X_OK) and (venv / ".xmodal-lock").is_file() else None


def install_label_studio(say: Callable[[str], None], *, quiet: bool = False) -> Path:
    """Run scripts/install_label_studio.sh (idempotent); the path of its ``label-studio``. Its
    progress is shown as it happens unless ``quiet``."""
    script = REPO / "scripts" / "install_label_studio.sh"
    if not script.is_file():
        raise ConfigError(f"--with-label-studio: {script} is missing; install Label Studio into its "
                          "own virtualenv and set LABEL_STUDIO_BIN")
    say("installing Label Studio into its own virtualenv (scripts/install_label_studio.sh, "
                "~15 s the first time with uv; its progress follows)…")
    # uv's progress goes to stderr: shown as it happens (captured only when quiet)
    proc = subprocess.run(["bash", str(script)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE if quiet else None, text=True)
    if proc.returncode != 0:
        raise ConfigError("scripts/install_label_studio.sh failed (installing Label Studio needs "
                          "network access to PyPI)" + (f":\n{proc.stderr[-2000:]}" if proc.stderr else ""))
    venv = Path(proc.stdout.strip().splitlines()[-1])
    found = venv / "bin" / "label-studio"
    if not os.access(found, os.X_OK):
        raise ConfigError(f"scripts/install_label_studio.sh finished but {found} is not there")
    return found
