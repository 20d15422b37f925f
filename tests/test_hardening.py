"""Issue 11's findings that need the shipped processes: `xmodal serve` (gunicorn) on loopback with
a real Redis, raw sockets for what an HTTP client library would not send.

Every process is a tracked child in its own process group, stopped in the fixture's teardown.
"""

from __future__ import annotations

import json
import os
import socket
from types import SimpleNamespace

import pytest
from conftest import poll

from xmodal.simulation.processes import ProcessManager, free_port, wait_backend

LS_PID = 7


@pytest.fixture
def serve(xenv, ws, tmp_path):
    """``serve(**env)`` -> the URL of a running `xmodal serve` for the test's MODEL_DIR."""
    pm = ProcessManager(tmp_path / "logs")

    def start(workers: int = 1, **env) -> str:
        port = free_port()
        child = pm.start("backend", [os.sys.executable, "-m", "xmodal.cli", "serve", "--host",
                                     "127.0.0.1", "--port", str(port), "--workers", str(workers)],
                         env=dict(os.environ, PYTHONUNBUFFERED="1", OPENBLAS_NUM_THREADS="1", **env))
        url = f"http://127.0.0.1:{port}"
        wait_backend(pm, child, url, timeout=60)
        start.port, start.child = port, child
        return url

    yield start
    pm.stop_all(grace=3)


def raw_http(port: int, head: str, chunks: list[bytes] = (), timeout: float = 10.0) -> tuple[int, dict]:
    """Send ``head`` then ``chunks`` as-is; -> (status, JSON body or {})."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head.encode())
        for c in chunks:
            try:
                s.sendall(c)
            except (BrokenPipeError, ConnectionResetError):   # answered and closed before the end
                break
        data = b""
        while True:
            try:
                part = s.recv(65536)
            except ConnectionResetError:
                break
            if not part:
                break
            data += part
            if b"\r\n\r\n" in data:
                head_b, _, rest = data.partition(b"\r\n\r\n")
                length = [int(h.split(b":")[1]) for h in head_b.split(b"\r\n")
                          if h.lower().startswith(b"content-length:")]
                if length and len(rest) >= length[0]:
                    break
    status = int(data.split(b" ", 2)[1])
    body = data.partition(b"\r\n\r\n")[2]
    try:
        return status, json.loads(body)
    except ValueError:
        return status, {}


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def test_a_chunked_body_over_the_limit_is_413_under_gunicorn(serve):
    serve(XMODAL_MAX_CONTENT_LENGTH="16384")
    for route in ("/webhook", "/predict", "/setup", "/search"):
        head = (f"POST {route} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        body = [chunk(b'{"text": "')] + [chunk(b"x" * 4096) for _ in range(10)] + [chunk(b'"}'), b"0\r\n\r\n"]
        status, out = raw_http(serve.port, head, body)
        assert status == 413, (route, status, out)
        assert "16384 bytes" in out["error"]
    small = [chunk(b'{"action": "PROJECT_UPDATED", '), chunk(b'"project": {"id": 7}}'), b"0\r\n\r\n"]
    head = ("POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    assert raw_http(serve.port, head, small) == (200, {"status": "ignored", "action": "PROJECT_UPDATED"})


def test_script_name_and_path_info_headers_from_a_client_are_ignored(serve):
    """``SCRIPT_NAME: /health`` on any route was gunicorn's "500 Bad Request" before the app or
    auth ran (it maps the header into the environ for loopback peers); PATH_INFO would re-route."""
    serve(workers=1)
    for route, header, expected in (("/metrics", "SCRIPT_NAME: /health", "xmodal_"),
                                    ("/health", "SCRIPT_NAME: /x", '"UP"'),
                                    ("/health", "PATH_INFO: /metrics", '"UP"'),
                                    ("/search?text=a", "Script_Name: /search", '"results"')):
        head = f"GET {route} HTTP/1.1\r\nHost: x\r\n{header}\r\nConnection: close\r\n\r\n"
        with socket.create_connection(("127.0.0.1", serve.port), timeout=10) as s:
            s.sendall(head.encode())
            data = b""
            while part := s.recv(65536):
                data += part
        status = int(data.split(b" ", 2)[1])
        assert status < 500, (route, header, data[:300])
        assert expected.encode() in data, (route, header, data[:300])


# -- the API key goes only to configured hosts ------------------------------------------------
class Listener:
    """A TCP listener on loopback that records every connection and every byte sent to it (and
    answers 401)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        import threading

        self.sock = socket.socket()
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.received = b""
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.settimeout(2)
                try:
                    self.received += conn.recv(65536)
                    conn.sendall(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n"
                                 b"Connection: close\r\n\r\n")
                except OSError:
                    pass

    def close(self):
        self.sock.close()


@pytest.fixture
def listener():
    lst = Listener()
    yield lst
    lst.close()


def _setup_and_rebuild(xenv, listener):
    import contextlib

    from test_backend_api import build_index, post, setup_body

    from backend.app import create_app
    from workers.resync import resync
    from xmodal.index.store import clear_cache

    clear_cache()
    client = create_app({"TESTING": True}).test_client()
    body = dict(setup_body(), hostname=listener.url, access_token="caller-token")
    assert post(client, "/setup", body).status_code == 200
    with contextlib.suppress(Exception):   # the push fails either way (401 or no connection)
        build_index(xenv.redis, n_pairs=4)
    with contextlib.suppress(Exception):
        resync("proj", redis_client=xenv.redis)
    return client


def test_the_api_key_never_reaches_a_host_named_by_setup(xenv, ws, listener, monkeypatch, caplog):
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "operator-secret-key")
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    monkeypatch.setenv("XMODAL_LABEL_STUDIO_HOSTS", "http://ls.example")
    _setup_and_rebuild(xenv, listener)
    import time

    time.sleep(0.3)   # anything in flight would have arrived
    assert listener.received == b""
    assert any("ls.untrusted_host" in rec.getMessage() and listener.url in rec.getMessage()
               for rec in caplog.records)
    from xmodal.cli.status import collect

    status = collect(xenv.redis, xenv.models, queue=xenv.tag)
    assert status["projects"]["proj"]["ls_refused_url"] == listener.url


def test_a_configured_host_gets_the_key(xenv, ws, listener, monkeypatch):
    """The same steps with the listener allowed: it does get the key (the test above can see it)."""
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "operator-secret-key")
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    monkeypatch.setenv("XMODAL_LABEL_STUDIO_HOSTS", f"http://ls.example,{listener.url}/")
    _setup_and_rebuild(xenv, listener)

    poll("the key at the listener", lambda: b"operator-secret-key" in listener.received, timeout=10)


def test_a_setup_token_goes_only_to_the_configured_url_never_to_the_named_host(xenv, ws, listener,
                                                                           monkeypatch):
    """Label Studio calls itself "localhost" while the operator configured 127.0.0.1: its token
    still serves the configured URL; the host /setup named gets nothing."""
    configured = Listener()
    try:
        monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
        monkeypatch.setenv("LABEL_STUDIO_URL", configured.url)
        _setup_and_rebuild(xenv, listener)   # hostname = the other listener, token "caller-token"
        poll("the token at the configured URL", lambda: b"caller-token" in configured.received, timeout=10)
        assert listener.received == b""
    finally:
        configured.close()


def test_hosts_are_compared_exactly_after_normalisation(monkeypatch):
    """Scheme, host and port, exactly: another loopback address, or ``localhost`` for
    ``127.0.0.1``, is another origin (an adversarial run had the key sent to 127.0.0.2); a user
    part or a backslash is no origin at all (parsers disagree about the host of
    ``http://a:1\\@b:2``)."""
    from xmodal.labelstudio.hosts import is_trusted, trusted_url

    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    monkeypatch.delenv("XMODAL_LABEL_STUDIO_HOSTS", raising=False)
    configured = {"url": "http://127.0.0.1:8080"}
    for same in ("http://127.0.0.1:8080", "HTTP://127.0.0.1:8080/", "http://127.0.0.1:8080/x",
                 " http://127.0.0.1:8080 "):
        assert trusted_url(same, configured) == "http://127.0.0.1:8080", same
    for other in ("http://localhost:8080", "http://127.0.0.2:8080", "http://[::1]:8080",
                  "http://127.1:8080", "http://2130706433:8080", "http://[::ffff:127.0.0.1]:8080",
                  "http://127.0.0.1:8081", "https://127.0.0.1:8080", "http://127.0.0.1.evil.example:8080",
                  "http://user:pw@127.0.0.1:8080", "http://@127.0.0.1:8080",
                  "http://127.0.0.1:9393\\@127.0.0.1:8080", "http://127.0.0.1:8080\\",
                  "http://127.0.0.1\t:8080", "ftp://127.0.0.1:8080", "//127.0.0.1:8080"):
        assert not is_trusted(other, configured), other
    # normalisation: default ports, case, a trailing dot, IPv6 written any way
    assert is_trusted("https://LS.Example.org./", {"url": "https://ls.example.org:443"})
    assert is_trusted("http://ls.example.org:80", {"url": "http://ls.example.org"})
    assert is_trusted("http://[0:0:0:0:0:0:0:1]:8080", {"url": "http://[::1]:8080"})
    assert not is_trusted("http://ls.example.org", {"url": "http://user:pw@ls.example.org"})


@pytest.mark.parametrize("trick", ["other_loopback", "user_part", "backslash"])
def test_the_api_key_never_reaches_a_host_that_only_looks_configured(xenv, ws, monkeypatch, trick):
    """The adversarial run's three hostnames, end to end: /setup names them with a token, the
    rebuild and a resync run, and a listener where each could lead records every byte. With
    ``XMODAL_LABEL_STUDIO_HOSTS=http://127.0.0.1:P`` the key went to 127.0.0.2:P four times."""
    import time

    configured = Listener()                      # 127.0.0.1:P, the operator's Label Studio
    port = configured.port
    traps = [Listener("127.0.0.2", port)] if trick == "other_loopback" else [Listener()]
    named = {"other_loopback": f"http://127.0.0.2:{port}",
             "user_part": f"http://user:pw@127.0.0.1:{port}",
             "backslash": f"http://127.0.0.1:{traps[0].port}\\@127.0.0.1:{port}"}[trick]
    try:
        monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
        monkeypatch.setenv("LABEL_STUDIO_API_KEY", "operator-secret-key")
        monkeypatch.setenv("XMODAL_LABEL_STUDIO_HOSTS", configured.url)
        _setup_and_rebuild(xenv, SimpleNamespace(url=named))
        time.sleep(0.3)   # anything in flight would have arrived
        for trap in traps:
            assert trap.received == b"", trap.received[:200]
        assert b"Basic " not in configured.received   # no credentials of the caller's either
        from xmodal.labelstudio.connection import ConnectionRecord

        assert ConnectionRecord(xenv.redis, "proj").refused() == named
    finally:
        for lst in [configured, *traps]:
            lst.close()


def test_xmodal_status_warns_about_a_refused_host(xenv, ws, listener, monkeypatch):
    import subprocess
    import sys

    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "operator-secret-key")
    _setup_and_rebuild(xenv, listener)
    out = subprocess.run([sys.executable, "-m", "xmodal.cli", "status"], capture_output=True,
                         text=True, timeout=60, env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    assert "WARNING" in out.stdout and listener.url in out.stdout
    assert "XMODAL_LABEL_STUDIO_HOSTS" in out.stdout


# -- slow clients -------------------------------------------------------------------------------
def test_a_stalled_body_is_408_and_does_not_hold_the_server(serve):
    """A client that sends headers and 10 of 100 bytes, then nothing: 408 after the body deadline
    (1 s here), while /health is answered meanwhile (sync workers answered nothing for 60 s)."""
    import requests

    url = serve(workers=1, XMODAL_BODY_TIMEOUT_S="1", XMODAL_THREADS="8")
    stalled = []
    for _ in range(4):
        s = socket.create_connection(("127.0.0.1", serve.port), timeout=10)
        s.sendall(b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n" + b'{"action":')
        stalled.append(s)
    assert requests.get(f"{url}/health", timeout=10).status_code == 200
    for s in stalled:
        data = b""
        while b"\r\n\r\n" not in data:
            part = s.recv(4096)
            assert part, data
            data += part
        assert data.startswith(b"HTTP/1.1 408"), data[:200]
        s.close()


def test_stalled_request_heads_do_not_hold_the_server(serve):
    """More clients than threads, each sending half a request head and then nothing: /health
    answers at once (a head is read in the worker's main loop, not by a thread), and each
    stalled client gets a 408 at the request deadline (5 s here) and is closed (a fuzzing run:
    300 of them left /health unanswered for as long as they stayed)."""

    import requests

    url = serve(workers=1, XMODAL_THREADS="4", XMODAL_BODY_TIMEOUT_S="5")
    stalled = []
    for _ in range(12):
        s = socket.create_connection(("127.0.0.1", serve.port), timeout=20)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        stalled.append(s)
    assert requests.get(f"{url}/health", timeout=15).status_code == 200
    # answered while the 12 stalled requests (3 x the threads) still hold their sockets: none
    # of them has been cut yet, so /health did not wait for a thread they held
    for s in stalled:
        s.setblocking(False)
        with pytest.raises(BlockingIOError):
            s.recv(1)
        s.setblocking(True)
    for s in stalled:
        data = s.recv(4096)
        assert data.startswith(b"HTTP/1.1 408"), data[:200]
        assert b"XMODAL_BODY_TIMEOUT_S" in data
        s.close()
    log = serve.child.log_path.read_text(errors="replace")
    assert "Socket error processing request" not in log


def _trickle(port: int, until: float, interval: float = 2.0) -> tuple[bytes, float]:
    """POST /webhook announcing 100 bytes, then one byte every ``interval`` s until the server
    answers or closes, or ``until`` (monotonic) passes: -> (what the server sent, seconds)."""
    import select
    import time

    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n")
        data = b""
        for _ in range(100):                  # at most 100 bytes, and never past ``until``
            if select.select([s], [], [], interval)[0]:
                while part := s.recv(65536):
                    data += part
                return data, time.monotonic() - t0
            if time.monotonic() > until:
                break
            try:
                s.sendall(b" ")
            except OSError:
                break
        return data, time.monotonic() - t0


def test_a_trickled_body_is_cut_at_the_deadline(serve):
    """An adversarial run: one byte every 2 s held a request for 48 s with a 10 s body deadline
    (each read got its byte in time). The deadline now counts the whole request: 408 at 3 s here,
    and the connection closed."""
    import time

    serve(workers=1, XMODAL_BODY_TIMEOUT_S="3")
    data, took = _trickle(serve.port, until=time.monotonic() + 20)
    assert data.startswith(b"HTTP/1.1 408"), (data[:200], took)
    assert b"Connection: close" in data and took < 5.0, took


def test_trickling_clients_do_not_starve_health_or_webhooks(serve, capsys):
    """Twice as many trickling clients as threads, for 15 s, each reconnecting when it is cut:
    /health and a webhook keep their usual latency (200 such clients against 128 threads left
    both unanswered for the whole window in an adversarial run)."""
    import statistics
    import threading
    import time

    import requests

    url = serve(workers=1, XMODAL_THREADS="4", XMODAL_BODY_TIMEOUT_S="5")
    end = time.monotonic() + 15
    cut = []

    def client():
        for _ in range(10):                   # reconnect when cut, for at most 15 s
            if time.monotonic() > end:
                return
            data, _ = _trickle(serve.port, until=end)
            cut.append(data[:12])

    trickling = [threading.Thread(target=client, daemon=True) for _ in range(8)]
    for th in trickling:
        th.start()
    time.sleep(1.0)                           # every thread of the worker would be taken by now
    health, hooks = [], []
    for _ in range(25):
        t0 = time.perf_counter()
        assert requests.get(f"{url}/health", timeout=10).status_code == 200
        health.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        resp = requests.post(f"{url}/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": LS_PID}},
                             timeout=10)
        assert resp.status_code == 200
        hooks.append(time.perf_counter() - t0)
        time.sleep(0.4)
    for th in trickling:
        th.join(timeout=30)
    assert cut and all(c.startswith(b"HTTP/1.1 408") for c in cut), cut[:5]
    with capsys.disabled():
        print(f"\n[hardening] 8 trickling clients on 4 threads for 15 s: /health p50 "
              f"{1000 * statistics.median(health):.1f} ms, max {1000 * max(health):.1f} ms; webhook p50 "
              f"{1000 * statistics.median(hooks):.1f} ms, max {1000 * max(hooks):.1f} ms; "
              f"{len(cut)} trickles cut with 408")
    assert max(health) < 1.0 and statistics.median(health) < 0.1, health
    assert max(hooks) < 1.0 and statistics.median(hooks) < 0.1, hooks


def test_whole_requests_are_served_as_before_keep_alive_pipelined_chunked_expect(serve):
    """What the buffering worker must not break: a kept-alive connection, two requests in one
    write, a chunked body, Expect: 100-continue (the client waits for the 100 before its body),
    and a body of several MiB sent in pieces."""

    import requests

    url = serve(workers=1)
    with requests.Session() as session:     # one connection, kept alive
        for _ in range(3):
            assert session.get(f"{url}/health", timeout=10).json()["status"] == "UP"
    ignored = json.dumps({"action": "PROJECT_UPDATED", "project": {"id": LS_PID}}).encode()

    def post(extra: str = "") -> bytes:
        return (f"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(ignored)}\r\n{extra}\r\n").encode() + ignored

    with socket.create_connection(("127.0.0.1", serve.port), timeout=10) as s:   # pipelined
        s.sendall(post() + post("Connection: close\r\n"))
        data = b""
        while part := s.recv(65536):
            data += part
        assert data.count(b"HTTP/1.1 200 OK") == 2 and data.count(b'"ignored"') == 2, data[:500]
    head = ("POST /webhook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            "Connection: close\r\n\r\n")
    chunks = [chunk(ignored[:10]), chunk(ignored[10:]), b"0\r\n\r\n"]
    assert raw_http(serve.port, head, chunks) == (200, {"status": "ignored", "action": "PROJECT_UPDATED"})
    with socket.create_connection(("127.0.0.1", serve.port), timeout=10) as s:   # Expect
        s.sendall(post("Expect: 100-continue\r\nConnection: close\r\n")[:-len(ignored)])
        assert s.recv(65536).startswith(b"HTTP/1.1 100 Continue")
        s.sendall(ignored)
        data = b""
        while part := s.recv(65536):
            data += part
        assert data.startswith(b"HTTP/1.1 200") and b"100 Continue" not in data, data[:300]
    body = json.dumps({"action": "PROJECT_UPDATED", "project": {"id": LS_PID},
                       "padding": "x" * (6 * 2**20)}).encode()
    head = (f"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    status, out = raw_http(serve.port, head, [body[i:i + 65536] for i in range(0, len(body), 65536)])
    assert (status, out) == (200, {"status": "ignored", "action": "PROJECT_UPDATED"})


def test_buffered_bytes_are_bounded_per_worker(serve):
    """Slow clients cost buffers instead of threads; the buffers are bounded: a body announced over
    the limit is a 413 before it is sent, and past XMODAL_BUFFER_BYTES a request is a 503."""
    serve(workers=1, XMODAL_MAX_CONTENT_LENGTH="100000", XMODAL_BUFFER_BYTES="150000",
          XMODAL_BODY_TIMEOUT_S="5")
    head = "POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n"
    status, out = raw_http(serve.port, head.format(200_000))
    assert status == 413 and "100000 bytes" in out["error"]
    held = socket.create_connection(("127.0.0.1", serve.port), timeout=10)
    try:
        held.sendall(head.format(100_000).encode() + b"x" * 90_000)   # and then nothing
        status, out = raw_http(serve.port, head.format(100_000), [b"x" * 90_000])
        assert status == 503 and "XMODAL_BUFFER_BYTES" in out["error"]
    finally:
        held.close()


# -- worker supervision -------------------------------------------------------------------------
def test_a_dead_scheduler_child_of_xmodal_worker_is_restarted_and_retries_run(xenv, ws, tmp_path):
    """rq restarted it only in its 10-minute maintenance (and an idle worker woke every 405 s)."""
    import signal
    import sys
    from datetime import timedelta

    from test_faults import _descendants

    from xmodal.jobs.queueing import get_queue
    from xmodal.simulation.processes import wait_worker

    pm = ProcessManager(tmp_path / "logs")
    try:
        worker = pm.start("worker", [sys.executable, "-m", "xmodal.cli", "worker", "--name",
                                     f"{xenv.tag}-w"],
                          env=dict(os.environ, PYTHONUNBUFFERED="1", XMODAL_SCHEDULER_CHECK_S="1"))
        wait_worker(pm, worker, xenv.redis, timeout=60)
        scheduler = poll("the scheduler child", lambda: _descendants(worker.pid), timeout=30,
                         procs=[worker])[0]
        os.kill(scheduler, signal.SIGKILL)
        poll("a new scheduler child", lambda: [p for p in _descendants(worker.pid) if p != scheduler],
             timeout=30, procs=[worker])
        # a retry with a backoff is a scheduled job: it runs on time
        job = get_queue(xenv.redis).enqueue_in(timedelta(seconds=1), "os.getpid")
        poll("the scheduled job to run", lambda: job.get_status(refresh=True) == "finished",
             timeout=30, procs=[worker])
        assert "worker.scheduler_dead" in worker.log_path.read_text()
    finally:
        pm.stop_all(grace=3)


# -- log lines ------------------------------------------------------------------------------------
def test_control_characters_from_requests_are_escaped_in_log_lines(xenv, ws, caplog):
    """NUL, \\r, ESC and U+2028 from a request reached the log raw (only \\n was escaped): a \\r
    rewrites a line on a terminal, a line separator forges one of the caller's choosing."""
    import logging
    import re

    from backend.app import create_app
    from xmodal.logfmt import kv

    assert kv("e", v="a\x00b\rc\u2028d\x1b[31m\x85") == 'event=e v="a\\x00b\\rc\\u2028d\\x1b[31m\\x85"'
    client = create_app({"TESTING": True}).test_client()
    hostile = "X\r\nevent=forged\x00\x1b[2K\u2028"
    with caplog.at_level(logging.INFO, logger="backend"):
        client.post("/webhook", json={"action": hostile, "project": {"id": LS_PID}})
        client.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": LS_PID},
                                      "annotation": {"id": hostile, "task": 1}})
        client.get("/search%00%0d%1b?text=a")
    lines = [rec.getMessage() for rec in caplog.records if "event=http" in rec.getMessage()]
    assert len(lines) == 3, lines
    for line in lines:
        assert not re.search("[\x00-\x1f\x7f-\x9f\u2028\u2029]", line), repr(line)
    assert "\\x00" in lines[0] and "\\r\\n" in lines[0]


def test_the_readme_never_starts_an_open_backend_on_the_network():
    """Every ``xmodal serve`` in the README's shell blocks binds to loopback, or its block sets
    basic auth first: the start block ran ``--host 0.0.0.0`` with no auth (copy-paste opened the
    backend to the network)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh|shell)\n(.*?)```", readme, flags=re.S)
    serves = 0
    for block in blocks:
        for line in block.splitlines():
            command = line.split("#", 1)[0]
            if not re.search(r"\bxmodal serve\b", command):
                continue
            serves += 1
            host = re.search(r"--host[ =](\S+)", command)
            if host and host.group(1) not in ("127.0.0.1", "localhost", "::1", "[::1]"):
                assert "BASIC_AUTH_USER" in block and "BASIC_AUTH_PASS" in block, line
    assert serves, "the README has no xmodal serve example any more: update this test"


# -- TASKS_DELETED racing ANNOTATION_CREATED --------------------------------------------------------
def test_tasks_deleted_racing_annotation_created_leaves_no_live_pair_on_a_deleted_task(serve, xenv):
    """An adversarial run: 6 of 60 races left a live pair on a deleted task (the check ran before,
    and apart from, the write). Both webhooks sent at once to a real `xmodal serve` (2 processes,
    so they really run in parallel), 150 times, each on a fresh task: the deleted-task check now
    lives in the pair write's own script."""
    import threading

    from conftest import annotation_body, image_id, text_id

    from xmodal.project.pairs import PairStore

    serve(workers=2)
    runs, statuses = 150, []
    for k in range(runs):
        task, ann = 50_000 + k, 90_000 + k
        bodies = [json.dumps(annotation_body("ANNOTATION_CREATED", ann, task, image_id(k % 40),
                                             text_id(k % 40), project=LS_PID)),
                  json.dumps({"action": "TASKS_DELETED", "tasks": [{"id": task}],
                              "project": {"id": LS_PID}})]
        if k % 2:
            bodies.reverse()
        go = threading.Barrier(2)
        out = [None, None]

        def send(i, body):
            head = (f"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body.encode())}\r\nConnection: close\r\n\r\n")
            go.wait(timeout=10)
            out[i] = raw_http(serve.port, head, [body.encode()])[0]

        threads = [threading.Thread(target=send, args=(i, b)) for i, b in enumerate(bodies)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=30)
        statuses.append(tuple(out))
    assert all(s in (200, 409) for pair in statuses for s in pair), statuses
    store = PairStore(xenv.redis, "proj")
    on_deleted = [p for p in store.all_pairs() if store.is_task_deleted(p["task_id"])]
    assert on_deleted == [], f"{len(on_deleted)} of {runs} races left a live pair on a deleted task"
    assert len(store.all_pairs()) == 0


# -- a decode budget per web worker ------------------------------------------------------------------
PROBE = '''
import time

import numpy as np
from PIL import Image


class Probe:
    """Decodes the whole image, as an image encoder does, and holds it a moment."""

    def transform(self, paths):
        out = []
        for p in paths:
            with Image.open(p) as img:
                pixels = np.asarray(img.convert("RGB"))
            time.sleep(1.0)
            out.append(np.full(24, float(pixels[0, 0, 0] + 1), np.float32))
        return np.stack(out)


def make():
    return Probe()
'''


def _peak_rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_concurrent_large_image_decodes_are_bounded_per_worker(serve, xenv, ws, tmp_path, capsys):
    """An adversarial run: four concurrent 49-megapixel PNG queries took one web worker from 1.28
    to 3.0 GiB. With one decode slot (XMODAL_DECODE_SLOTS=1) four at once peak like one."""
    import threading

    import requests
    from PIL import Image
    from test_backend_api import build_index
    from test_faults import _descendants

    (tmp_path / "decode_probe.py").write_text(PROBE)
    images = tmp_path / "queries"
    images.mkdir()
    big = images / "big.png"
    Image.new("RGB", (7000, 7000), (9, 9, 9)).save(big)          # 49 MP, 147 MB decoded
    build_index(xenv.redis)                                     # an index with signal: queries embed
    ws.save_config(dict(ws.config, encoders=dict(ws.config["encoders"], image="py:decode_probe:make")))
    url = serve(workers=1, XMODAL_DECODE_SLOTS="1", XMODAL_IMAGE_ROOTS=str(images),
                PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    worker = _descendants(serve.child.pid)[0]

    def query():
        return requests.post(f"{url}/search", json={"image": str(big), "k": 3}, timeout=60)

    first = query()
    assert first.status_code == 200, first.text
    one = _peak_rss_mib(worker)
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(query())) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=90)
    assert [a.status_code for a in answers] == [200] * 4, [a.text[:200] for a in answers]
    four = _peak_rss_mib(worker)
    with capsys.disabled():
        print(f"\n[hardening] web worker peak RSS: {one:.0f} MiB after one 49 MP query, {four:.0f} MiB "
              "after four more at once (XMODAL_DECODE_SLOTS=1)")
    # one decode is ~147 MB as RGB: four at once would add ~440 MB to the peak
    assert four - one < 100, f"peak RSS {one:.0f} MiB after one query, {four:.0f} MiB after four at once"
