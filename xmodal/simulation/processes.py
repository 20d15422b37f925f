"""Child processes of the demo, the benchmarks and the tests: each in its own process group,
logged to a file, stopped as a group on exit, Ctrl-C and SIGTERM; the backend and worker command
lines and the waits for them to be ready.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from xmodal.errors import ConfigError

log = logging.getLogger(__name__)

def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``port``. SO_REUSEADDR as gunicorn sets it: a port whose
    last connections are in TIME_WAIT (a demo just finished) is free to it, and was reported "in
    use" to a new user."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in text[-lines:])


# -- child processes --------------------------------------------------------------------------

@dataclass
class Child:
    name: str
    argv: list[str]
    popen: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None


class ProcessManager:
    """Starts children in their own process groups and stops exactly those groups.

    A child's group id is its PID (``start_new_session``), so stopping the backend also stops
    gunicorn's workers and stopping the RQ worker also stops a job's work horse, and nothing else
    is touched. Stopping: SIGTERM to the group, then SIGKILL after ``grace`` seconds.
    """

    def __init__(self, log_dir: Path):
        self.log_dir = Path(log_dir)
        self.children: list[Child] = []
        self.extra_pids: dict[str, int] = {}   # processes started indirectly (embedded Redis)

    def start(self, name: str, argv: list[str], env: dict | None = None, cwd=None) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as logf:
            logf.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
            logf.flush()
            popen = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, cwd=cwd, start_new_session=True)
        child = Child(name, argv, popen, log_path)
        self.children.append(child)
        log.debug("started %s pid=%s", name, popen.pid)
        return child

    def check_alive(self, child: Child, what: str) -> None:
        if not child.alive():
            raise ConfigError(f"the {child.name} process exited with code {child.popen.returncode} "
                              f"while {what}; its log ({child.log_path}) ends with:\n{log_tail(child.log_path)}")

    def stop(self, child: Child, grace: float = 10.0) -> None:
        if child.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGTERM)
            try:
                child.popen.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.pid, signal.SIGKILL)
                child.popen.wait(5)
        # children of the group that outlived the leader (e.g. a work horse)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)

    def stop_all(self, grace: float = 10.0) -> None:
        for child in reversed(self.children):
            try:
                t0 = time.perf_counter()
                self.stop(child, grace)
                log.debug("stopped %s (pid %s) in %.2f s", child.name, child.pid, time.perf_counter() - t0)
            except Exception as exc:  # noqa: BLE001 - keep stopping the others
                log.warning("could not stop %s (pid %s): %s", child.name, child.pid, exc)
        self.children.clear()

    def describe(self) -> dict:
        out = {c.name: {"pid": c.pid, "argv": c.argv, "log": str(c.log_path)} for c in self.children}
        for name, pid in self.extra_pids.items():
            out[name] = {"pid": pid}
        return out


@contextlib.contextmanager
def terminate_on_signals():
    """SIGTERM/SIGHUP raise KeyboardInterrupt in the main thread, so ``finally`` blocks run."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            previous[sig] = signal.signal(sig, handler)
        except (ValueError, OSError):  # not the main thread
            pass
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# -- services ---------------------------------------------------------------------------------

def python_cli() -> list[str]:
    return [sys.executable, "-m", "xmodal.cli"]


def start_worker(pm: ProcessManager, env: dict, simple: bool = True) -> Child:
    """One RQ worker on the rebuild queue: ``xmodal worker``'s command line (``rq_argv``).

    ``simple``: rq's SimpleWorker runs each job in the worker process instead of a forked work
    horse that re-imports numpy and the index code for every job: ~0.03 s instead of ~0.45 s from
    label to published index on 2 shared cores, which is most of a demo's per-label time. The
    production default (fork, isolating a crashing job) is unchanged."""
    from workers.command import rq_argv

    if not simple:
        return pm.start("worker", python_cli() + ["worker"], env=env)
    argv = rq_argv(argparse.Namespace(burst=False, name=None, max_jobs=None, simple=True,
                                      queue=env.get("XMODAL_QUEUE")))
    # like `xmodal worker`: the URL goes through the environment, not argv (no password in `ps`)
    return pm.start("worker", argv, env=dict(env, RQ_REDIS_URL=env["REDIS_URL"]))


BUSY_CODE = "while True: pass"


def start_busy(pm: ProcessManager, n: int) -> list[Child]:
    """``n`` CPU-bound processes (a Python busy loop each, ``busy-<i>.log``) beside a benchmark, to
    measure it on a machine where something else computes; stopped with ``pm``'s other children."""
    return [pm.start(f"busy-{i}", [sys.executable, "-c", BUSY_CODE]) for i in range(n)]


def start_backend(pm: ProcessManager, env: dict, port: int) -> Child:
    return pm.start("backend", python_cli() + ["serve", "--host", "127.0.0.1", "--port", str(port),
                                                "--workers", "1"], env=env)


def wait_backend(pm: ProcessManager, child: Child, url: str, timeout: float = 90.0) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pm.check_alive(child, "starting")
        try:
            r = requests.get(f"{url}/health", timeout=2)
            if r.ok and r.json().get("status") == "UP":
                return
        except (requests.RequestException, ValueError):
            pass
        time.sleep(0.2)
    raise ConfigError(f"the backend did not answer {url}/health within {timeout:.0f} s; "
                      f"its log ({child.log_path}):\n{log_tail(child.log_path)}")


def wait_worker(pm: ProcessManager, child: Child, client, queue_name: str | None = None,
                timeout: float = 60.0) -> None:
    from rq import Worker

    from xmodal.jobs.queueing import get_queue

    queue = get_queue(client, queue_name)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pm.check_alive(child, "starting")
        try:
            if any(w.pid == child.pid for w in Worker.all(queue=queue)):
                return
        except Exception:  # noqa: BLE001 - registration races
            pass
        time.sleep(0.2)
    raise ConfigError(f"the RQ worker did not register within {timeout:.0f} s; "
                      f"its log ({child.log_path}):\n{log_tail(child.log_path)}")


def child_env(**extra) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", **extra)
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # see run_demo; the user's value wins
        env.setdefault(var, "1")
    return env
