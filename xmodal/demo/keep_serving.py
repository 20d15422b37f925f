"""``xmodal demo --keep-serving`` leaves the backend, the worker and Redis running and records
them; ``xmodal demo --stop`` stops exactly those (never a process that reused a recorded PID)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

from xmodal.demo.console import Console
from xmodal.errors import DataError
from xmodal.simulation.processes import ProcessManager

STATE_FILE = "processes.json"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def recorded_alive(home: Path) -> dict:
    """Processes a ``--keep-serving`` demo recorded that are still running (same command line)."""
    state = Path(home) / STATE_FILE
    try:
        recorded = json.loads(state.read_text())
    except (OSError, ValueError):
        return {}
    out = {}
    for name, info in recorded.get("processes", {}).items():
        cmd = cmdline(int(info["pid"]))
        marker = info.get("marker") or ""
        if cmd and (not marker or cmd.startswith(marker) or marker in cmd):
            out[name] = dict(info, backend=recorded.get("backend"))
    return out


def stop_recorded(home: Path, console: Console | None = None) -> int:
    """``xmodal demo --stop``: stop the processes a ``--keep-serving`` demo left running."""
    console = console or Console()
    state = Path(home) / STATE_FILE
    if not state.is_file():
        console.say(f"nothing to stop: no {state}")
        return 0
    try:
        recorded = json.loads(state.read_text())
    except ValueError as exc:
        raise DataError(f"{state} is unreadable ({exc}); stop the processes by hand") from exc
    stopped = 0
    order = sorted(recorded.get("processes", {}).items(), key=lambda kv: kv[0] == "redis")
    for name, info in order:
        pid = int(info["pid"])
        marker = info.get("marker") or ""
        if not cmdline(pid) or (marker and not cmdline(pid).startswith(marker) and marker not in cmdline(pid)):
            continue  # gone, or the PID was reused by something else
        sig_target = (lambda s: os.killpg(pid, s)) if info.get("group") else (lambda s: os.kill(pid, s))
        with contextlib.suppress(ProcessLookupError, PermissionError):
            sig_target(signal.SIGTERM)
            stopped += 1
            console.say(f"stopped {name} (pid {pid})")
    state.unlink(missing_ok=True)
    return stopped



def record_processes(home: Path, pm: ProcessManager, backend_url: str) -> None:
    # the command line as it is now (after gunicorn's / rq's exec): `--stop` only signals a PID
    # whose command line still starts with it, never a reused PID
    procs = {c.name: {"pid": c.pid, "group": True, "marker": cmdline(c.pid)[:200], "log": str(c.log_path)}
             for c in pm.children if c.alive()}
    if "redis" in pm.extra_pids:
        pid = pm.extra_pids["redis"]
        procs["redis"] = {"pid": pid, "group": False, "marker": cmdline(pid)[:200] or "redis-server"}
    (Path(home) / STATE_FILE).write_text(json.dumps({"backend": backend_url, "processes": procs,
                                                      "started_at": time.time()}, indent=1))
