"""Label Studio started as the README and the tests start it sends nothing out (issue 21).

The server runs behind a proxy of the test's own (HTTP_PROXY/HTTPS_PROXY: its Python clients,
Sentry's included, go through it) that records every connection and forwards none. Label Studio
is used meanwhile as this project uses it: a project, tasks, annotations, predictions, pages that
fail. A second server beside it, with Label Studio's own default Sentry DSN, shows that the proxy
sees what is sent (about 95 s: Sentry sends its sessions once a minute).
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
import requests
from ls_server import start_label_studio, stop_label_studio

from xmodal.simulation.label_studio import QUIET_SETTINGS

pytestmark = pytest.mark.e2e


class RecordingProxy:
    """A listener on 127.0.0.1 that keeps the first line of every connection (``CONNECT host:443``
    for HTTPS) and answers 502: nothing reaches the network."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.seen: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    self.seen.append(conn.recv(4096).split(b"\r\n", 1)[0].decode("latin-1"))
                    conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                except OSError:
                    pass

    def env(self) -> dict[str, str]:
        env = {name: self.url for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")}
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost,::1"   # the ML backend, itself
        return env


def use_label_studio(server, rounds: int) -> None:
    """What this project does with Label Studio, and some errors for Sentry to report."""
    s = requests.Session()
    s.headers.update(server.headers)
    api = f"{server.url}/api"
    project = s.post(f"{api}/projects", json={"title": "offline check", "label_config": (
        '<View><Text name="t" value="$text"/><Choices name="c" toName="t">'
        '<Choice value="a"/><Choice value="b"/></Choices></View>')}).json()["id"]
    s.post(f"{api}/projects/{project}/import", json=[{"text": f"t{i}"} for i in range(5)]).raise_for_status()
    tasks = [t["id"] for t in s.get(f"{api}/tasks", params={"project": project}).json()["tasks"]]
    for i in range(rounds):
        task = tasks[i % len(tasks)]
        s.post(f"{api}/predictions", json={"task": task, "model_version": f"v{i}", "score": 0.5,
                                            "result": []})
        s.patch(f"{api}/projects/{project}", json={"model_version": f"v{i}"})
        s.get(f"{api}/projects/{project}/next/")
        s.get(f"{api}/tasks/{10**9 + i}")          # 404
        s.post(f"{api}/predictions", data=b"{")    # 400: a body that is no JSON
        s.get(f"{server.url}/projects/{project}/data")   # a page, as a browser asks for it
    s.post(f"{api}/tasks/{tasks[0]}/annotations", json={"result": []}).raise_for_status()


# sentry-sdk sends release-health sessions every 60 s (sessions.SessionFlusher.flush_interval),
# whatever the pages did; errors at once
SESSION_FLUSH_S = 60


def test_label_studio_sends_nothing_out():
    """Two servers side by side for one Sentry flush interval: the one started with this project's
    settings, and one with Label Studio's own default DSN, which shows that the proxy would see it."""
    quiet, default = RecordingProxy(), RecordingProxy()
    label_studio_dsn = "https://68b045ab408a4d32a910d339be8591a4@o227124.ingest.sentry.io/5820521"
    assert "LABEL_STUDIO_SENTRY_DSN" in QUIET_SETTINGS
    servers = [start_label_studio(extra_env=quiet.env()),
               start_label_studio(extra_env={**default.env(), "LABEL_STUDIO_SENTRY_DSN": label_studio_dsn})]
    try:
        started = time.monotonic()
        for server in servers:
            use_label_studio(server, rounds=20)
        deadline = started + SESSION_FLUSH_S + 10
        while time.monotonic() < deadline and not any("sentry.io" in line for line in default.seen):
            time.sleep(1)
    finally:
        for server in servers:
            stop_label_studio(server, keep_log=False)
    assert any("sentry.io" in line for line in default.seen), \
        f"the check is blind: with the default DSN the proxy saw {default.seen}"
    assert quiet.seen == [], f"Label Studio connected out: {quiet.seen[:10]}"
