"""Issue 11's findings that need the shipped processes: `xmodal serve` (gunicorn) on loopback with
a real Redis, raw sockets for what an HTTP client library would not send.

Every process is a tracked child in its own process group, stopped in the fixture's teardown.
"""

from __future__ import annotations

import json
import os
import socket

import pytest

from xmodal.demo.processes import ProcessManager, free_port, wait_backend

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
