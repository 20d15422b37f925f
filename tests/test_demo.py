"""``xmodal demo``: its pieces, its error messages, and short real runs (embedded Redis, a real
RQ worker process, the real backend, real encoders) that must leave no process behind.

Not marked slow: each real run takes 5-16 s here (cold feature cache included)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from xmodal.datasets import synthetic
from xmodal.demo.baselines import BaselineCache, baseline_metrics
from xmodal.demo.console import Console
from xmodal.demo.keep_serving import STATE_FILE, cmdline, stop_recorded
from xmodal.demo.run import DemoOptions, run_demo
from xmodal.errors import ConfigError
from xmodal.evaluation.ground_truth import GroundTruth
from xmodal.simulation.annotator import choice_payload, webhook_payload
from xmodal.simulation.processes import ProcessManager

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", **extra)
    for var in ("REDIS_URL", "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "MODEL_DIR"):
        if var not in extra:
            env.pop(var, None)
    return env


def run_cli(args, timeout=600, **env):
    return subprocess.run([sys.executable, "-m", "xmodal.cli", "demo", *args], cwd=ROOT,
                          env=_env(**env), capture_output=True, text=True, timeout=timeout)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def _pids(output: str) -> dict[str, int]:
    found = {}
    for name, pattern in (("redis", r"embedded server \(pid (\d+)\)"), ("backend", r"\(pid (\d+)\) ·"),
                          ("worker", r"worker pid (\d+)")):
        m = re.search(pattern, output)
        if m:
            found[name] = int(m.group(1))
    return found


def _wait_gone(pids, timeout=15.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if _alive(p)]
        if not left:
            return []
        time.sleep(0.1)
    return left


# -- pieces -----------------------------------------------------------------------------------

def test_webhook_payload_is_what_the_backend_parses():
    from xmodal.labelstudio.annotations import parse_annotation_event, webhook_project

    task = {"id": 7, "data": {"item_id": "img_0001.png", "image": "/x.png",
                              "options": [{"value": "t1", "html": "a red disc"}]}}
    body = choice_payload(3, task, 42, "t1", "caption", "image")
    assert webhook_project(body) == 3
    ev = parse_annotation_event(body, "caption")
    assert (ev.action, ev.annotation_id, ev.task_id, ev.choice, ev.text, ev.item_id) == \
        ("ANNOTATION_CREATED", 42, 7, "t1", None, "img_0001.png")
    skipped = parse_annotation_event(webhook_payload(3, task, 43, [], cancelled=True), "caption")
    assert skipped.cancelled and skipped.choice is None


def test_ground_truth_metrics_match_the_core(tmp_path):
    from xmodal.core.metrics import mean_average_precision, recall_at_k
    from xmodal.datasets.folder import load_folder

    ds = load_folder(synthetic.generate(tmp_path / "d", n=24, seed=1, captions_per_image=2))
    gt = GroundTruth(ds)
    assert gt.match("image", 3) == int(ds.pairs[ds.pairs[:, 0] == 3][0, 1])
    assert gt.match("text", 5) == int(ds.pairs[ds.pairs[:, 1] == 5][0, 0])
    rng = np.random.default_rng(0)
    A, B = rng.normal(size=(24, 4)).astype(np.float32), rng.normal(size=(48, 4)).astype(np.float32)
    m = gt.evaluate(A, B)
    S = A @ B.T
    rel = np.zeros_like(S, dtype=bool)
    rel[ds.pairs[:, 0], ds.pairs[:, 1]] = True
    img_of_text = np.zeros(48, int)
    img_of_text[ds.pairs[:, 1]] = ds.pairs[:, 0]
    assert m["recall@10_i2t"] == pytest.approx(recall_at_k(S, rel, (10,))[10])
    assert m["recall@10_t2i"] == pytest.approx(recall_at_k(S.T, img_of_text, (10,))[10])
    assert m["map_i2t"] == pytest.approx(mean_average_precision(S, ds.image_labels, ds.text_labels))
    assert set(m) >= {"recall@1_i2t", "recall@5_t2i", "map_t2i"}


def test_baselines_and_their_cache(tmp_path):
    from xmodal.datasets.folder import load_folder

    ds = load_folder(synthetic.generate(tmp_path / "d", n=30, seed=2))
    gt = GroundTruth(ds)
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(30, 8)).astype(np.float32), rng.normal(size=(30, 5)).astype(np.float32)
    pairs = np.array([(i, gt.match("image", i)) for i in (0, 4, 9)])
    out = baseline_metrics(gt, X, Y, "image", pairs, n_random=3)
    assert set(out) == {"random", "cca"} and "recall@10_i2t" in out["random"]
    assert baseline_metrics(gt, X, Y, "image", pairs[:1], n_random=3) == {}  # Pearson needs 2
    cache = BaselineCache(tmp_path / "c", a=1)
    calls = []
    assert cache.get(3, lambda: calls.append(1) or {"random": {"x": 1.0}}) == {"random": {"x": 1.0}}
    cache.save()
    again = BaselineCache(tmp_path / "c", a=1)
    assert again.get(3, lambda: calls.append(1) or {}) == {"random": {"x": 1.0}} and calls == [1]
    assert BaselineCache(tmp_path / "c", a=2).values == {}  # other settings, other file


def test_process_manager_stops_the_whole_group(tmp_path):
    pm = ProcessManager(tmp_path / "logs")
    # a parent that leaves a grandchild in its group, like gunicorn's workers
    child = pm.start("sleeper", ["bash", "-c", "sleep 60 & echo $! > grandchild; wait"], cwd=tmp_path)
    deadline = time.monotonic() + 10
    while not (tmp_path / "grandchild").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = int((tmp_path / "grandchild").read_text())
    assert _alive(child.pid) and _alive(grandchild)
    pm.stop_all(grace=5)
    assert _wait_gone([child.pid, grandchild]) == []
    assert pm.children == []
    assert (tmp_path / "logs" / "sleeper.log").is_file()


def test_process_manager_reports_a_dead_child(tmp_path):
    pm = ProcessManager(tmp_path / "logs")
    child = pm.start("broken", ["bash", "-c", "echo boom-message; exit 3"])
    child.popen.wait(10)
    with pytest.raises(ConfigError, match="(?s)exited with code 3.*boom-message"):
        pm.check_alive(child, "starting")


def test_stop_recorded_only_stops_what_it_recorded(tmp_path):
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    other = subprocess.Popen(["sleep", "61"], start_new_session=True)
    deadline = time.monotonic() + 5  # /proc/PID/cmdline is empty for a moment after exec
    while not (cmdline(proc.pid) and cmdline(other.pid)) and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        (tmp_path / STATE_FILE).write_text(json.dumps({"processes": {
            "sleeper": {"pid": proc.pid, "group": True, "marker": "sleep 60"},
            "reused": {"pid": other.pid, "group": True, "marker": "not-this-command"}}}))
        assert stop_recorded(tmp_path, Console(quiet=True)) == 1
        assert proc.wait(10) is not None
        assert other.poll() is None  # its command line does not match: a reused PID is left alone
        assert not (tmp_path / STATE_FILE).exists()
        assert stop_recorded(tmp_path, Console(quiet=True)) == 0
    finally:
        for p in (proc, other):
            p.kill()
            p.wait()


def test_bad_options_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="--labels"):
        run_demo(DemoOptions(labels=1, home=tmp_path, quiet=True))
    with pytest.raises(ConfigError, match="--select"):
        run_demo(DemoOptions(select="audio", home=tmp_path, quiet=True))


# -- errors through the CLI: a message that says what to do, exit 1, no traceback ---------------

def test_missing_data_folder(tmp_path):
    r = run_cli(["--data", str(tmp_path / "nope"), "--cache-dir", str(tmp_path / "home"),
                 "--no-label-studio"], timeout=120)
    assert r.returncode == 1
    assert "no such folder" in r.stderr and "--data synthetic" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_folder_without_ground_truth(tmp_path):
    data = synthetic.generate(tmp_path / "d", n=4, seed=0)
    lines = [json.loads(x) for x in (data / "texts.jsonl").read_text().splitlines()]
    (data / "texts.jsonl").write_text("".join(json.dumps({"id": x["id"], "text": x["text"]}) + "\n"
                                              for x in lines))
    r = run_cli(["--data", str(data), "--cache-dir", str(tmp_path / "home"), "--no-label-studio"],
                timeout=120)
    assert r.returncode == 1 and "no text names its image" in r.stderr
    assert "Traceback" not in r.stderr


def test_redis_down(tmp_path):
    r = run_cli(["--n", "6", "--labels", "3", "--cache-dir", str(tmp_path / "home"), "--port", "0",
                 "--no-label-studio", "--out", str(tmp_path / "r")],
                timeout=120, REDIS_URL="redis://127.0.0.1:1/0")
    assert r.returncode == 1
    assert "cannot reach Redis" in r.stderr and "unset REDIS_URL" in r.stderr
    assert "Traceback" not in r.stderr


def test_label_studio_unreachable(tmp_path):
    r = run_cli(["--n", "6", "--labels", "3", "--cache-dir", str(tmp_path / "home"), "--port", "0",
                 "--out", str(tmp_path / "r")],
                timeout=180, LABEL_STUDIO_URL="http://127.0.0.1:1", LABEL_STUDIO_API_KEY="x")
    assert r.returncode == 1
    assert "Label Studio" in r.stderr and "--no-label-studio" in r.stderr
    assert "Traceback" not in r.stderr
    # the services it had started are gone
    assert _wait_gone(list(_pids(r.stdout).values())) == []


# -- real runs --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("demo-home")
    out = tmp_path_factory.mktemp("reports")
    t0 = time.perf_counter()
    # a fresh matplotlib config dir: its font-cache INFO line must not reach the console
    r = run_cli(["--n", "36", "--labels", "5", "--cache-dir", str(home), "--out", str(out),
                 "--port", "0", "--no-label-studio"], MPLCONFIGDIR=str(tmp_path_factory.mktemp("mpl")))
    return r, home, out, time.perf_counter() - t0


def test_short_real_demo(first_run):
    r, home, out, _ = first_run
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    history = json.loads((out / "history.json").read_text())
    curve = history["curve"]
    assert [p["labels"] for p in curve] == [1, 2, 3, 4, 5]
    # every label produced a new index version that the worker published
    assert [p["index_version"] for p in curve] == sorted({p["index_version"] for p in curve})
    assert curve[-1]["index_version"] >= 5
    for p in curve[1:]:  # Pearson needs 2 references
        assert set(p["methods"]) == {"ssm-al", "random", "cca"}
        assert 0.0 <= p["methods"]["ssm-al"]["recall@10_i2t"] <= 1.0
    assert len(history["medoids"]) == 5 and all(m["text"] for m in history["medoids"])
    assert history["examples"]["text_to_image"] and history["examples"]["image_to_text"]
    for name in ("index.html", "learning_curve.png", "medoids.png"):
        assert (out / name).stat().st_size > 0
    assert "label 5/5" in r.stdout and "report:" in r.stdout
    # a newcomer's console: no unexplained dashes, "1 pair", no stray library log lines
    assert "–" not in r.stdout and "1 pairs" not in r.stdout, r.stdout
    assert "Recall@10 not yet" in r.stdout  # label 1: one pair, no ranking yet, and it says why
    assert "matplotlib" not in r.stdout + r.stderr and " INFO " not in r.stdout + r.stderr
    assert re.search(r"demo finished in \d+\.\d s", r.stdout)
    # no process left behind: backend, worker, embedded Redis
    pids = _pids(r.stdout)
    assert set(pids) == {"redis", "backend", "worker"}, r.stdout
    assert _wait_gone(pids.values()) == []


def test_second_run_reuses_caches(first_run, tmp_path):
    r1, home, _, _ = first_run
    assert r1.returncode == 0, r1.stderr
    r2 = run_cli(["--n", "36", "--labels", "5", "--cache-dir", str(home), "--out", str(tmp_path / "r2"),
                  "--port", "0", "--no-label-studio"])
    assert r2.returncode == 0, r2.stdout + r2.stderr
    assert "generated" not in r2.stdout and "embedded 36 images" not in r2.stdout
    h2 = json.loads((tmp_path / "r2" / "history.json").read_text())
    assert h2["settings"]["features"] == "reused from the previous run"
    assert h2["settings"]["baselines"].startswith("5 label counts read")
    # the same session again: a fresh project state, the same numbers
    h1 = json.loads((first_run[2] / "history.json").read_text())
    assert [p["methods"].get("ssm-al") for p in h2["curve"]] == [p["methods"].get("ssm-al") for p in h1["curve"]]


def test_ctrl_c_stops_everything(tmp_path):
    home = tmp_path / "home"
    synthetic.ensure(home / "data" / "synthetic-n36-seed0", n=36, seed=0)
    proc = subprocess.Popen([sys.executable, "-m", "xmodal.cli", "demo", "--n", "36", "--labels", "20",
                             "--cache-dir", str(home), "--out", str(tmp_path / "r"), "--port", "0",
                             "--no-label-studio"],
                            cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a pytest started in the background (`pytest &`) ignores SIGINT, and so
                            # would the demo: give it the default, as a terminal would
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "label 2/" in line:
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = "".join(lines) + out
    assert proc.returncode == 130, text + err
    assert "interrupted" in err and "Traceback" not in err
    pids = _pids(text)
    assert set(pids) == {"redis", "backend", "worker"}, text
    assert _wait_gone(pids.values()) == []


def test_keep_serving_then_stop(tmp_path):
    import requests

    home = tmp_path / "home"
    r = run_cli(["--n", "24", "--labels", "3", "--cache-dir", str(home), "--out", str(tmp_path / "r"),
                 "--port", "0", "--no-label-studio", "--keep-serving"])
    state_file = home / STATE_FILE
    state = json.loads(state_file.read_text()) if state_file.is_file() else {"processes": {}}
    pids = [p["pid"] for p in state["processes"].values()]
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        assert set(state["processes"]) == {"backend", "worker", "redis"}
        backend = state["backend"]
        assert requests.get(f"{backend}/health", timeout=5).json()["status"] == "UP"
        hits = requests.get(f"{backend}/search", params={"image_id": "img_0001.png", "k": 3}, timeout=5)
        assert hits.ok and len(hits.json()["results"]) == 3
        again = run_cli(["--n", "24", "--labels", "3", "--cache-dir", str(home), "--port", "0",
                         "--no-label-studio", "--out", str(tmp_path / "r2")], timeout=120)
        assert again.returncode == 1 and "still running" in again.stderr and "--stop" in again.stderr
        stop = run_cli(["--stop", "--cache-dir", str(home)], timeout=60)
        assert stop.returncode == 0 and "stopped backend" in stop.stdout and "stopped worker" in stop.stdout
        assert _wait_gone(pids) == []
    finally:  # never leave them running, whatever failed above
        for pid in _wait_gone(pids, timeout=0.1):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.e2e
def test_demo_through_label_studio(tmp_path):
    """The same loop with a real Label Studio: tasks imported, annotations made through its API,
    its webhook calls the backend, the worker pushes predictions back."""
    ls_server = pytest.importorskip("ls_server")
    ls_bin = ls_server.require_label_studio_bin()
    template = ls_server.ensure_template(ls_bin)  # initialised once per machine (~45 s)
    home = tmp_path / "home"
    import shutil

    shutil.copytree(template, home / "label-studio" / "data")
    (home / "label-studio" / "credentials.json").write_text(json.dumps(
        {"username": ls_server.USERNAME, "password": ls_server.PASSWORD, "token": ls_server.TOKEN}))
    r = run_cli(["--n", "24", "--labels", "4", "--cache-dir", str(home), "--out", str(tmp_path / "r"),
                 "--port", "0", "--with-label-studio"], timeout=600, LABEL_STUDIO_BIN=str(ls_bin))
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"Label Studio: (http://127\.0\.0\.1:\d+)/projects/(\d+)/data .*pid (\d+)", r.stdout)
    assert m, r.stdout
    history = json.loads((tmp_path / "r" / "history.json").read_text())
    assert history["settings"]["label_studio"]["project_id"] == int(m.group(2))
    assert [p["labels"] for p in history["curve"]] == [1, 2, 3, 4]
    assert "ssm-al" in history["curve"][-1]["methods"]
    pids = list(_pids(r.stdout).values()) + [int(m.group(3))]
    assert len(pids) == 4 and _wait_gone(pids, timeout=30) == []
