"""Start a REAL Label Studio server for tests (see /work/shared/docs/label-studio-1.23.md).

Plain functions plus a fixture factory. In a conftest.py::

    from ls_server import ls_server_fixture   # tests/ is on sys.path (pytest rootdir/prepend mode)
    ls_server = ls_server_fixture()           # session scope, local-files document root "/"

    def test_x(ls_server):
        ls = xmodal.labelstudio.client.connect(ls_server.url, ls_server.token)

How it works:
- the binary is found as `xmodal demo` finds it (`xmodal.simulation.label_studio.find_label_studio`: the
  venv scripts/install_label_studio.sh made for the current lock); if there is none the test is skipped;
- `label-studio init` (migrations: 42 s idle, 70-105 s on a busy 2-core box) runs ONCE into a template data dir under
  `${XMODAL_CACHE_DIR:-~/.cache/xmodal}/ls-template/<version>-<credentials hash>`; every server gets a
  fresh copy of it, so a start costs 5-9 s and no test sees another session's projects;
- one server per process: every fixture/`shared_server()` caller in a pytest run shares it
  (reference counted), so at most one Label Studio runs at a time on a shared machine;
- the server binds 127.0.0.1 on a free port; its log is kept (see `LabelStudioServer.log_tail()`).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from xmodal.encoders.base import default_cache_dir
from xmodal.simulation.label_studio import find_label_studio, label_studio_env

USERNAME = "xmodal-test@example.com"
PASSWORD = "xmodal-test-password"
TOKEN = "xmodaltesttoken0123456789abcdef01234567"  # legacy token: any string of > 5 chars
INSTALL_HINT = "scripts/install_label_studio.sh"


def cache_root() -> Path:
    return default_cache_dir()


def find_label_studio_bin() -> Path | None:
    """As `xmodal demo` finds it: `$LABEL_STUDIO_BIN`, `label-studio` on PATH, or the venv that
    scripts/install_label_studio.sh made for the current lock; None if absent."""
    return find_label_studio()


def require_label_studio_bin() -> Path:
    """Like find_label_studio_bin() but skips the calling test when Label Studio is not installed."""
    found = find_label_studio_bin()
    if found is None:
        pytest.skip(
            "Label Studio is not installed: run scripts/install_label_studio.sh "
            "(or set LABEL_STUDIO_BIN / LS_VENV to an existing installation)"
        )
    return found


def label_studio_version(ls_bin: Path) -> str:
    """Version from the venv's python. NOT `label-studio --version`: in 1.23.2 that goes on to start a
    server on 0.0.0.0:8080 with ~/.local/share/label-studio as data dir."""
    python = ls_bin.parent / "python"
    if python.exists():
        out = subprocess.run(
            [str(python), "-c", "import label_studio; print(label_studio.__version__)"],
            capture_output=True, text=True, timeout=60,
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    st = ls_bin.stat()  # unknown layout: key by the binary itself
    return "unknown-" + hashlib.sha1(f"{ls_bin.resolve()}:{st.st_mtime_ns}".encode()).hexdigest()[:10]


def base_env(data_dir: Path, document_root: Path | None = None) -> dict[str, str]:
    """Environment for `label-studio init/start`: closed network, local ML backends allowed."""
    return label_studio_env(data_dir, document_root)


def ensure_template(ls_bin: Path | None = None, *, timeout: float = 600) -> Path:
    """Return an initialised data dir (user + token + migrated DB), creating it once (~42 s).

    Keyed by Label Studio version and the test credentials; safe against concurrent sessions
    (file lock, then an atomic rename)."""
    ls_bin = ls_bin or require_label_studio_bin()
    version = label_studio_version(ls_bin)
    creds = hashlib.sha1(f"{USERNAME}:{PASSWORD}:{TOKEN}".encode()).hexdigest()[:8]
    parent = cache_root() / "ls-template"
    template = parent / f"{version}-{creds}"
    if (template / "label_studio.sqlite3").exists():
        return template
    parent.mkdir(parents=True, exist_ok=True)
    with open(parent / f"{template.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (template / "label_studio.sqlite3").exists():
            return template
        work = Path(tempfile.mkdtemp(prefix=f"{template.name}.", dir=parent))
        log = parent / f"{template.name}.init.log"
        cmd = [str(ls_bin), "init", "--data-dir", str(work), "--username", USERNAME,
               "--password", PASSWORD, "--user-token", TOKEN, "--enable-legacy-api-token", "--quiet"]
        with open(log, "w") as out:
            proc = subprocess.run(cmd, env=base_env(work), stdout=out, stderr=subprocess.STDOUT,
                                  cwd=work, timeout=timeout)
        if proc.returncode != 0 or not (work / "label_studio.sqlite3").exists():
            shutil.rmtree(work, ignore_errors=True)
            raise RuntimeError(f"`label-studio init` failed (rc={proc.returncode}); log: {log}\n"
                               + _tail(log))
        os.rename(work, template)
    return template


def _die_with_parent() -> None:
    """preexec_fn: SIGTERM the server if the test process dies without teardown (Linux only)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LabelStudioServer:
    url: str
    token: str
    username: str
    password: str
    data_dir: Path
    process: subprocess.Popen
    log_path: Path
    document_root: Path | None = None
    _own_data_dir: bool = field(default=False, repr=False)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Token {self.token}"}

    def log_tail(self, lines: int = 80) -> str:
        return _tail(self.log_path, lines)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        stop_label_studio(self)


def start_label_studio(
    document_root: str | os.PathLike | None = None,
    *,
    ls_bin: Path | None = None,
    data_dir: str | os.PathLike | None = None,
    port: int | None = None,
    extra_env: dict[str, str] | None = None,
    timeout: float = 120,
) -> LabelStudioServer:
    """Copy the template data dir and `label-studio start` on 127.0.0.1; wait for /health UP.

    `document_root` enables local-file serving (LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT); local
    storages must be subdirectories of it. `data_dir` defaults to a fresh temp dir (removed on
    stop); the log file lives next to it and is kept."""
    ls_bin = ls_bin or require_label_studio_bin()
    template = ensure_template(ls_bin)
    own = data_dir is None
    data_dir = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="xmodal-ls-")) / "data"
    if data_dir.exists():
        shutil.rmtree(data_dir)
    shutil.copytree(template, data_dir)
    log_path = data_dir.parent / "label-studio.log"
    port = port or free_port()
    env = base_env(data_dir, Path(document_root) if document_root is not None else None)
    env.update(extra_env or {})
    cmd = [str(ls_bin), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
           "--data-dir", str(data_dir)]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=data_dir, start_new_session=True,
                                preexec_fn=_die_with_parent)
    server = LabelStudioServer(
        url=f"http://127.0.0.1:{port}", token=TOKEN, username=USERNAME, password=PASSWORD,
        data_dir=data_dir, process=proc, log_path=log_path,
        document_root=Path(document_root) if document_root is not None else None, _own_data_dir=own,
    )
    try:
        _wait_healthy(server, port, timeout)
    except BaseException:
        stop_label_studio(server, keep_log=True)
        raise
    return server


def _wait_healthy(server: LabelStudioServer, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"Label Studio exited with rc={server.process.returncode}; "
                               f"log {server.log_path}:\n{server.log_tail()}")
        # `start` silently moves to port+1 when the port is busy: trust the log, not our guess.
        moved = re.search(r"Starting development server at http://[\d.]+:(\d+)/", server.log_tail(400))
        if moved and int(moved.group(1)) != port:
            port = int(moved.group(1))
            server.url = f"http://127.0.0.1:{port}"
        with contextlib.suppress(requests.RequestException, ValueError):
            r = requests.get(f"{server.url}/health", timeout=2)
            if r.ok and r.json().get("status") == "UP":
                return
        time.sleep(0.3)
    raise TimeoutError(f"Label Studio not healthy after {timeout:.0f} s; log {server.log_path}:\n"
                       + server.log_tail())


def stop_label_studio(server: LabelStudioServer, *, keep_log: bool = True, grace: float = 10) -> None:
    """Terminate the server's process group (SIGTERM, then SIGKILL); remove a temp data dir."""
    proc = server.process
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(grace)
    if server._own_data_dir:
        shutil.rmtree(server.data_dir, ignore_errors=True)
        if not keep_log:
            shutil.rmtree(server.data_dir.parent, ignore_errors=True)


# --- one shared server per process ------------------------------------------------------------

_lock = threading.Lock()
_shared: LabelStudioServer | None = None
_users = 0


def acquire_shared_server(document_root: str | os.PathLike | None = None) -> LabelStudioServer:
    """Start (or reuse) this process's server. Every acquire needs a release_shared_server().

    ``document_root`` None: any running server will do (a new one gets "/"); a path: the running
    server's local-files root must be that path or a parent of it (else RuntimeError)."""
    global _shared, _users
    root = Path(document_root).resolve() if document_root is not None else None
    with _lock:
        if _shared is not None and not _shared.alive():
            stop_label_studio(_shared)
            _shared, _users = None, 0
        if _shared is None:
            _shared = start_label_studio(root or Path("/"))
        elif root is not None and not (root == _shared.document_root or _shared.document_root in root.parents):
            raise RuntimeError(
                f"the shared Label Studio server serves local files from {_shared.document_root}, "
                f"not from {root}: use one document root (a common parent) for the whole test session"
            )
        _users += 1
        return _shared


@atexit.register
def _stop_shared_at_exit() -> None:
    if _shared is not None:
        stop_label_studio(_shared)


def release_shared_server() -> None:
    global _shared, _users
    with _lock:
        _users -= 1
        if _users <= 0 and _shared is not None:
            stop_label_studio(_shared)
            _shared, _users = None, 0


@contextlib.contextmanager
def shared_server(document_root: str | os.PathLike | None = None):
    server = acquire_shared_server(document_root)
    try:
        yield server
    finally:
        release_shared_server()


def ls_server_fixture(document_root: str | os.PathLike | None = None, *, scope: str = "session",
                      name: str | None = None):
    """A pytest fixture yielding this process's LabelStudioServer.

    `document_root` is LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT. None (default) reuses whatever server
    runs, else starts one with "/" (Label Studio's own default): any absolute directory can then be
    a local storage; LS still serves only files under a directory registered as a project's storage. Assign the
    result to a module/conftest name:
    `ls_server = ls_server_fixture()`."""

    @pytest.fixture(scope=scope, name=name)
    def _ls_server():
        with shared_server(document_root) as server:
            yield server

    return _ls_server


def _tail(path: Path, lines: int = 80) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "<no log>"
