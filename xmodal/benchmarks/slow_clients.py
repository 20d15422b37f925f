"""Slow clients against `xmodal serve`: N sockets send a webhook's headers and part of its body, then
stall (or, with ``--trickle``, send one more byte every 2 s and reconnect when the server cuts
them); meanwhile /health and a webhook are timed. Prints one line per server mode.

    REDIS_URL=redis://127.0.0.1:6379/13 python -m xmodal.benchmarks.slow_clients [--stalled 50]
    ... --stalled 200 --trickle --probes 30 --interval 0.5 --modes serve

Modes: ``serve`` (`xmodal serve` as shipped: gthread, body deadline) and ``sync`` (the previous
command line: ``gunicorn --workers 2`` sync workers). The webhook is a ``PROJECT_UPDATED`` event
(parsed and answered "ignored": the HTTP path without a project). Not a test: numbers for
docs/operations.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import select
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from xmodal import settings
from xmodal.simulation.processes import ProcessManager, free_port, wait_backend

WEBHOOK = json.dumps({"action": "PROJECT_UPDATED", "project": {"id": 1}}).encode()


def _stall(port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n" + b'{"action":')   # 10 of 100 bytes
        socks.append(s)
    return socks


def _keep_trickling(port: int, socks: list[socket.socket], stop: threading.Event) -> None:
    """One byte per socket every 2 s; a socket the server answered or closed is replaced by a
    new stalled one, so the pressure stays until ``stop``."""
    while not stop.wait(2.0):
        for i, s in enumerate(socks):
            try:
                if select.select([s], [], [], 0)[0]:   # answered (408) or closed
                    raise OSError
                s.send(b" ")
            except OSError:
                s.close()
                try:
                    socks[i] = _stall(port, 1)[0]
                except OSError:
                    pass


def _timed(port: int, method: str, path: str, body: bytes | None, timeout: float) -> float | None:
    t0 = time.perf_counter()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        conn.close()
        if resp.status >= 500:
            return None
    except OSError:
        return None
    return time.perf_counter() - t0


def measure(argv: list[str], env: dict, port: int, stalled: int, probes: int, timeout: float,
            log_dir: Path, trickle: bool = False, interval: float = 0.0) -> dict:
    pm = ProcessManager(log_dir)
    stop = threading.Event()
    try:
        child = pm.start("backend", argv, env=env)
        wait_backend(pm, child, f"http://127.0.0.1:{port}", timeout=60)
        socks = _stall(port, stalled)
        if trickle:
            threading.Thread(target=_keep_trickling, args=(port, socks, stop), daemon=True).start()
        time.sleep(0.5)   # the server has read what they sent
        health, hooks, t_start = [], [], time.monotonic()
        for _ in range(probes):
            health.append(_timed(port, "GET", "/health", None, timeout))
            hooks.append(_timed(port, "POST", "/webhook", WEBHOOK, timeout))
            time.sleep(interval)
        elapsed = time.monotonic() - t_start
    finally:
        stop.set()
        time.sleep(0.1)
        for s in socks if "socks" in locals() else []:
            s.close()
        pm.stop_all(grace=3)

    def summary(xs):
        ok = [x for x in xs if x is not None]
        return {"ok": len(ok), "failed": len(xs) - len(ok),
                "p50_ms": round(1000 * statistics.median(ok), 1) if ok else None,
                "max_ms": round(1000 * max(ok), 1) if ok else None}

    return {"health": summary(health), "webhook": summary(hooks), "elapsed_s": round(elapsed, 1)}


def main(args_in=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stalled", type=int, default=50)
    p.add_argument("--probes", type=int, default=10, help="requests of each kind")
    p.add_argument("--timeout", type=float, default=5.0, help="client timeout per probe (s)")
    p.add_argument("--modes", default="serve,sync")
    p.add_argument("--trickle", action="store_true",
                   help="the stalled sockets send a byte every 2 s, reconnecting when cut")
    p.add_argument("--interval", type=float, default=0.0, help="seconds between probes")
    args = p.parse_args(args_in)
    env = dict(os.environ, PYTHONUNBUFFERED="1", XMODAL_LOG_LEVEL="WARNING",
               MODEL_DIR=settings.get("MODEL_DIR") or tempfile.mkdtemp(prefix="xmodal-slow-"))
    py = [sys.executable, "-m"]
    for mode in args.modes.split(","):
        port = free_port()
        if mode == "serve":
            argv = py + ["xmodal.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
        else:
            argv = py + ["gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "2", "--timeout",
                         "60", "backend.wsgi:app"]
        with tempfile.TemporaryDirectory() as logs:
            out = measure(argv, env, port, args.stalled, args.probes, args.timeout, Path(logs),
                          args.trickle, args.interval)
        h, w = out["health"], out["webhook"]
        kind = "trickling" if args.trickle else "stalled"
        print(f"{mode:5s} {kind}={args.stalled}: /health {h['ok']}/{h['ok'] + h['failed']} answered, "
              f"p50 {h['p50_ms']} ms, max {h['max_ms']} ms; webhook {w['ok']}/{w['ok'] + w['failed']}, "
              f"p50 {w['p50_ms']} ms, max {w['max_ms']} ms; {out['elapsed_s']} s for all probes "
              f"(client timeout {args.timeout:g} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
