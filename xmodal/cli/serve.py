"""``xmodal serve``: the Label Studio ML backend under gunicorn (``backend.wsgi:app``)."""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import sys

from xmodal import settings

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="run the Label Studio ML backend (gunicorn)",
                              description="Run the ML backend: Label Studio connects to "
                              "http://HOST:PORT. Redis: $REDIS_URL, or an embedded server under "
                              "$MODEL_DIR/.redis when unset.")
    p.add_argument("--host", default=settings.get("XMODAL_HOST"))
    p.add_argument("--port", type=int, default=settings.get("XMODAL_PORT"))
    p.add_argument("--workers", type=int, default=settings.get("WEB_CONCURRENCY"),
                   help="gunicorn worker processes (default $WEB_CONCURRENCY or 2)")
    p.add_argument("--timeout", type=int, default=60, help="gunicorn worker timeout (s)")
    p.add_argument("--threads", type=int, default=settings.get("XMODAL_THREADS"),
                   help="threads per worker (gthread; default $XMODAL_THREADS or 64): a request "
                        "reaches one only when it has arrived whole, so slow clients hold none")
    p.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    p.set_defaults(func=run)


def gunicorn_argv(args) -> list[str]:
    exe = shutil.which("gunicorn", path=os.path.dirname(sys.executable) + os.pathsep
                       + os.environ.get("PATH", ""))
    cmd = [exe] if exe else [sys.executable, "-m", "gunicorn"]
    # gthread, not sync: a sync worker reading a stalled body (headers and part of it, then
    # nothing) serves no one else until the worker timeout. backend.gunicorn_worker reads each
    # request whole in its main loop, within $XMODAL_BODY_TIMEOUT_S, before a thread sees it: a
    # slow or trickling client holds no thread (docs/operations.md, "Slow clients")
    # --forwarder-headers "": gunicorn maps SCRIPT_NAME and PATH_INFO request headers into the
    # environ for peers in forwarded_allow_ips (loopback by default), so any local client could
    # set them: "SCRIPT_NAME: /health" on /metrics was gunicorn's 500 on every route, before the
    # app or auth ran. No proxy in front of xmodal sets them; now they are dropped like any other
    # header with an underscore (header_map "drop").
    return cmd + ["--bind", f"{args.host}:{args.port}", "--workers", str(args.workers),
                  "--worker-class", "backend.gunicorn_worker.DeadlineThreadWorker",
                  "--threads", str(args.threads), "--forwarder-headers", "",
                  "--timeout", str(args.timeout), "--access-logfile", "-",
                  "--error-logfile", "-", "backend.wsgi:app"]


def run(args) -> int:
    from xmodal.redis_conn import redis_url

    url = redis_url()  # starts the embedded server and exports REDIS_URL when unset
    argv = gunicorn_argv(args)
    if args.dry_run:
        print(shlex.join(argv))   # quoted: the empty --forwarder-headers value stays visible
        return 0
    if args.host not in ("127.0.0.1", "localhost", "::1") and not (
            settings.get("BASIC_AUTH_USER") and settings.get("BASIC_AUTH_PASS")):
        log.warning("listening on %s without BASIC_AUTH_USER/BASIC_AUTH_PASS: anyone who reaches "
                    "port %s can send labels and /setup; set both (and the same in Label Studio's "
                    "ML backend connection)", args.host, args.port)
    log.info("serving on http://%s:%s (redis %s, MODEL_DIR %s)", args.host, args.port,
             url.split("@")[-1], settings.get("MODEL_DIR"))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(argv[0], argv, os.environ)
    return 0  # not reached
