"""Rebuild jobs: real Redis, real ``rq worker`` processes (started through ``xmodal worker``)."""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
from conftest import annotation_body, image_id, task_body, text_id
from rq.job import Job
from rq.registry import FailedJobRegistry, FinishedJobRegistry

from workers.rebuild import rebuild
from xmodal.index.files import versions_on_disk
from xmodal.index.store import IndexStore, load_current
from xmodal.jobs import stats
from xmodal.jobs.queueing import enqueue_rebuild, flag_key, get_queue
from xmodal.labelstudio.push import LabelStudioPushError, refresh_label_studio
from xmodal.project.pairs import PairStore
from xmodal.project.workspace import Workspace
from xmodal.redis_conn import pkey
from xmodal.simulation.processes import free_port

LS_PID = 7


@pytest.fixture
def client(xenv, ws):
    from backend.app import create_app

    return create_app({"TESTING": True}).test_client()


def post_label(client, i, ann=None, **kw):
    body = annotation_body("ANNOTATION_CREATED", ann or 100 + i, 1000 + i, image_id(i), text_id(i),
                           project=LS_PID, **kw)
    resp = client.post("/webhook", data=json.dumps(body), content_type="application/json")
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def worker_cmd(xenv, name, burst=True):
    cmd = [sys.executable, "-m", "xmodal.cli", "worker", "--name", f"{xenv.tag}-{name}"]
    return cmd + (["--burst"] if burst else [])


def run_burst_worker(xenv, name="w1", timeout=60):
    proc = subprocess.run(worker_cmd(xenv, name), env=dict(os.environ), capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def versions_built(r, project="proj") -> int:
    return int(r.get(pkey(project, "index", "seq")) or 0)


# -- the job through a real worker -------------------------------------------------------------
def test_worker_rebuilds_after_webhooks(client, r, xenv, ws, capsys):
    for i in range(12):
        post_label(client, i)
    assert get_queue(r).count == 1
    t0 = time.perf_counter()
    proc = run_burst_worker(xenv)
    wall = time.perf_counter() - t0
    snap = load_current("proj", r)
    assert snap is not None and snap.version == 1 and snap.n_pairs == 12 and snap.has_signal
    # the worker's log has the rebuild's structured lines, with project and job id
    done = [ln for ln in proc.stderr.splitlines() if "event=rebuild.done" in ln]
    assert len(done) == 1 and "project=proj" in done[0] and f"job_id={xenv.tag}-rebuild-proj-" in done[0]
    last = stats.last_rebuild(r, "proj")
    assert last["pairs"] == 12 and last["new_pairs"] == 12 and last["label_to_prediction_s"] > 0
    assert FinishedJobRegistry(queue=get_queue(r)).count == 1
    assert r.get(flag_key("proj")) is None
    # the backend serves the new index at once
    body = {"tasks": [task_body(2000, image_id(30))], "project": f"{LS_PID}.1"}
    pred = client.post("/predict", data=json.dumps(body), content_type="application/json").get_json()
    assert pred["results"][0]["model_version"] == "v1" and pred["results"][0]["result"]
    # status: up to date, then a newer pair waits for the next rebuild
    from xmodal.cli.status import collect

    assert collect(r, xenv.models)["projects"]["proj"]["stale"] is False
    post_label(client, 20)
    status = collect(r, xenv.models)
    assert status["projects"]["proj"]["stale"] is True and status["queue"]["queued"] == 1
    assert status["embed_queue"] == {"name": f"{xenv.tag}-embed", "queued": 0, "started": 0, "failed": 0}
    with capsys.disabled():
        print(f"\n[rebuild, 40+40 items, 12 pairs] job {1000 * last['total_s']:.1f} ms (build "
              f"{1000 * last['build_s']:.1f} ms, write {1000 * last['write_s']:.1f} ms); burst worker "
              f"process wall {wall:.2f} s; label->index {last['label_to_prediction_s']:.2f} s")


def test_coalescing_ten_quick_labels_one_or_two_rebuilds(client, r, xenv):
    for i in range(10):
        post_label(client, i)
    assert get_queue(r).count == 1
    run_burst_worker(xenv)
    assert versions_built(r) <= 2
    assert load_current("proj", r).n_pairs == 10


def test_coalescing_with_a_live_worker(client, r, xenv):
    proc = subprocess.Popen(worker_cmd(xenv, "live", burst=False), env=dict(os.environ),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        from rq import Worker

        deadline = time.time() + 30
        while not Worker.all(queue=get_queue(r)) and time.time() < deadline:
            time.sleep(0.05)
        answers = [post_label(client, i) for i in range(10)]
        deadline = time.time() + 40
        while time.time() < deadline:
            snap = load_current("proj", r)
            if snap is not None and snap.n_pairs == 10 and get_queue(r).count == 0 \
                    and r.get(flag_key("proj")) is None:
                break
            time.sleep(0.05)
        assert load_current("proj", r).n_pairs == 10
        # one version per enqueued job, none lost or doubled; the labels that found a job waiting
        # joined it (how many did depends on how fast this machine posts against the worker: a
        # quiet machine builds 2 versions for 10 labels, a loaded one 3, never one a label)
        enqueued = sum(a["enqueued"] for a in answers)
        assert versions_built(r) == enqueued
        assert enqueued <= 5, [a["enqueued"] for a in answers]
    finally:
        proc.send_signal(signal.SIGTERM)  # warm shutdown of the worker this test started
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_pairs_arriving_during_a_rebuild_enqueue_exactly_one_more(r, xenv, ws):
    store = PairStore(r, "proj")
    for i in range(3):
        store.put(i, 1000 + i, image_id(i), text_id(i), 1.0)
    job_id, enqueued = enqueue_rebuild(r, "proj", "test")
    assert enqueued
    from xmodal.index.build import take_snapshot

    take_snapshot(r, ws, job_id)           # the job started: its flag is cleared
    store.put(9, 1009, image_id(9), text_id(9), 1.0)
    ids = {enqueue_rebuild(r, "proj", "late")[0] for _ in range(5)}
    assert len(ids) == 1 and job_id not in ids
    assert get_queue(r).count == 2


def test_stale_flags_are_replaced(r, xenv, ws):
    r.set(flag_key("proj"), f"gone-job|{time.time() - 3600:.3f}")
    job_id, enqueued = enqueue_rebuild(r, "proj", "test")
    assert enqueued and job_id != "gone-job"
    # a fresh flag whose job is not visible yet may be an enqueue in flight: left alone
    r.set(flag_key("proj"), f"in-flight|{time.time():.3f}")
    assert enqueue_rebuild(r, "proj", "test") == ("in-flight", False)


# -- the current pointer -----------------------------------------------------------------------
def test_current_pointer_only_moves_forward(r, xenv, ws):
    from xmodal.index.build import build_snapshot

    store = IndexStore(r, ws, keep=2)
    snaps = {v: build_snapshot(ws, v, [])[0] for v in (1, 2, 3, 4)}
    assert store.publish(snaps[3])[1] is True
    assert store.publish(snaps[2])[1] is False      # a slower, older build finishes later
    assert store.current_version() == 3
    assert store.publish(snaps[4])[1] is True
    assert versions_on_disk(ws) == [3, 4]            # pruned to keep=2
    assert load_current(ws, r).version == 4


def _pairs(n):
    return [{"annotation_id": 100 + i, "image_id": image_id(i), "text_id": text_id(i)} for i in range(n)]


def test_enhanced_index_round_trip_and_scores(r, xenv, make_workspace):
    """``"enhance": ["zscore", "csls"]``: stored column stats encode new queries exactly like the
    indexed items; scores/rank/search apply CSLS with the stored hubness terms; the file keeps it."""
    from xmodal.core.hubness import csls
    from xmodal.index.build import build_snapshot
    from xmodal.index.files import read_snapshot, write_snapshot

    ws = make_workspace("enh", n=40, n_medoids=12, enhance=["csls", "zscore"], csls_k=5)
    assert ws.config["enhance"] == ["zscore", "csls"]          # canonical order
    snap, _ = build_snapshot(ws, 1, _pairs(12))
    assert snap.enhance == ["zscore", "csls"] and snap.uses_csls and snap.csls_k == 5
    assert snap.image_col_stats.shape == (2, 12) and snap.meta["hubness_s"] >= 0
    X, Y = ws.load_features("image"), ws.load_features("text")
    np.testing.assert_allclose(snap.encode("image", X[:6]), snap.image_codes[:6], atol=1e-5)
    np.testing.assert_allclose(snap.encode("text", Y[3:9]), snap.text_codes[3:9], atol=1e-5)
    full = csls(snap.image_codes @ snap.text_codes.T, 5)       # the evaluation's CSLS = the index's
    np.testing.assert_allclose(snap.scores("image", snap.image_codes), full, atol=1e-4)
    np.testing.assert_allclose(snap.scores("text", snap.encode("text", Y)), full.T, atol=1e-4)
    ranked = snap.rank("image", image_id(3), None, 5)
    expected = np.argsort(-full[3], kind="stable")[:5]
    assert [t for t, _ in ranked] == [text_id(j) for j in expected]
    assert ranked[0][1] == pytest.approx(full[3, expected[0]], abs=1e-4)
    some = [text_id(j) for j in (7, 1, 30)]
    sub = snap.rank("image", image_id(3), some)
    assert sorted(v for _, v in sub) == pytest.approx(sorted(full[3, [7, 1, 30]]), abs=1e-4)
    hits = snap.search("text", snap.encode("text", Y[4:5]), k=3)[0]
    assert [h for h, _ in hits] == [image_id(j) for j in np.argsort(-full[:, 4], kind="stable")[:3]]
    back = read_snapshot(write_snapshot(ws, snap), "enh")
    for name in ("image_col_stats", "text_col_stats", "image_hub", "text_hub"):
        np.testing.assert_array_equal(getattr(back, name), getattr(snap, name))
    assert back.csls_k == 5 and back.enhance == ["zscore", "csls"]
    np.testing.assert_allclose(back.scores("image", back.image_codes), full, atol=1e-4)


def test_faithful_index_and_old_files_load_without_the_new_fields(r, xenv, ws, tmp_path):
    from xmodal.index.build import build_snapshot
    from xmodal.index.files import read_snapshot

    snap, _ = build_snapshot(ws, 1, _pairs(12))
    assert snap.enhance == [] and not snap.uses_csls and snap.image_col_stats is None
    np.testing.assert_allclose(snap.scores("image", snap.image_codes), snap.image_codes @ snap.text_codes.T)
    # a file written before "enhance" existed: no optional arrays, no csls_k/enhance in meta
    meta = {k: v for k, v in snap.meta.items() if k != "enhance"}
    meta.update(project="proj", version=1, measure=snap.measure, select=snap.select,
                sparse_top_k=None, sparse_power=1.0)
    old = tmp_path / "v1.npz"
    np.savez(old, image_ids=snap.image_ids, text_ids=snap.text_ids, image_codes=snap.image_codes,
             text_codes=snap.text_codes, image_refs=snap.image_refs, text_refs=snap.text_refs,
             pair_rows=snap.pair_rows, annotation_ids=snap.annotation_ids, medoid_ids=snap.medoid_ids,
             meta=np.asarray(json.dumps(meta)))
    loaded = read_snapshot(old, "proj")
    assert loaded.enhance == [] and loaded.csls_k is None and loaded.image_hub is None
    np.testing.assert_allclose(loaded.encode("text", ws.load_features("text")[:3]), snap.text_codes[:3],
                               atol=1e-5)
    assert loaded.rank("image", image_id(2), None, 3) == snap.rank("image", image_id(2), None, 3)


def test_enhance_names_are_validated(xenv, tmp_path):
    from xmodal.errors import ConfigError
    from xmodal.project.workspace import parse_enhance

    assert parse_enhance("csls, zscore") == ["zscore", "csls"] and parse_enhance(None) == []
    with pytest.raises(ConfigError, match="valid: zscore-medoids, zscore, csls"):
        parse_enhance("zscore,center")
    with pytest.raises(ConfigError, match="csls_k"):
        Workspace(tmp_path / "w").save_config({"csls_k": 0})
    assert Workspace(tmp_path / "w").save_config({})["enhance"] == [   # a new one's default
        "zscore-medoids", "zscore", "csls", "bridge"]
    assert parse_enhance("none") == [] == parse_enhance("")


def test_racing_workers_end_on_the_newest_index(r, xenv, ws, monkeypatch):
    """Six rebuild jobs (no coalescing) on two worker processes; a poller checks the pointer."""
    store = PairStore(r, "proj")
    for i in range(6):
        store.put(i, 1000 + i, image_id(i), text_id(i), 1.0)
    q = get_queue(r)
    for n in range(6):
        q.enqueue("workers.rebuild.rebuild", "proj", job_id=f"{xenv.tag}-race-{n}")
    seen, stop = [], threading.Event()
    key = pkey("proj", "index", "current")

    def poll():
        while not stop.is_set():
            v = r.get(key)
            if v is not None:
                seen.append(int(v))
            time.sleep(0.002)

    t = threading.Thread(target=poll)
    t.start()
    procs = [subprocess.Popen(worker_cmd(xenv, f"race{k}"), env=dict(os.environ),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for k in range(2)]
    for p in procs:
        assert p.wait(timeout=90) == 0, p.stderr.read()[-2000:]
    stop.set()
    t.join()
    assert seen == sorted(seen), "the current version moved backwards"
    assert int(r.get(key)) == versions_built(r) == 6
    snap = load_current("proj", r)
    assert snap.version == 6 and snap.n_pairs == 6
    assert len(versions_on_disk(ws)) <= 5


# -- failures ----------------------------------------------------------------------------------
def test_failure_lands_in_the_failed_registry_with_a_reason(r, xenv, ws, monkeypatch):
    ws.features_path("text").write_bytes(b"not a numpy file")
    monkeypatch.setenv("XMODAL_REBUILD_RETRIES", "1")
    monkeypatch.setenv("XMODAL_REBUILD_RETRY_INTERVALS", "0")
    job_id, _ = enqueue_rebuild(r, "proj", "test")
    run_burst_worker(xenv)
    failed = FailedJobRegistry(queue=get_queue(r))
    assert job_id in failed.get_job_ids()
    job = Job.fetch(job_id, connection=r)
    assert job.retries_left == 0                      # retried once, then failed for good
    exc = job.latest_result().exc_string
    assert "DataError" in exc and "text features" in exc and "unreadable" in exc
    from xmodal.cli.status import collect

    status = collect(r, xenv.models)
    assert status["queue"]["failed"] == 1
    assert "unreadable" in status["failures"][0]["error"]
    # a new label still gets a rebuild: the failed job's flag is not in the way
    PairStore(r, "proj").put(1, 1001, image_id(1), text_id(1), 1.0)
    assert enqueue_rebuild(r, "proj", "after failure")[1] is True


def test_missing_workspace_is_a_readable_failure(r, xenv):
    with pytest.raises(Exception, match="no workspace at .*MODEL_DIR"):
        rebuild("nowhere", redis_client=r)


# -- the Label Studio step ---------------------------------------------------------------------
def _link(r, ws, url="http://ls.example", key="tok"):
    r.hset(pkey(ws.name, "ls"), mapping={"url": url, "api_key": key})


def test_rebuild_pushes_predictions_for_unannotated_tasks(r, xenv, ws, fake_ls, monkeypatch):
    monkeypatch.setenv("XMODAL_LS_FIRST", "20")   # every open task in the first batch: one push
    fake_ls.tasks = [task_body(1000 + i, image_id(i)) for i in range(12)] + \
        [{"id": 99, "data": {"item_id": "img/unknown.jpg"}}]
    store = PairStore(r, "proj")
    for i in range(4):
        store.put(100 + i, 1000 + i, image_id(i), text_id(i), 1.0, received_at=time.time() - 1)
    _link(r, ws)
    result = rebuild("proj", redis_client=r)
    assert fake_ls.opened == [("http://ls.example", "tok")]
    (pid, preds, version), = fake_ls.pushes
    assert pid == LS_PID and version == "v1" and fake_ls.versions == [(LS_PID, "v1")]
    assert sorted(preds) == [1000 + i for i in range(4, 12)]   # annotated tasks 1000..1003 skipped
    p = preds[1004]
    assert p["model_version"] == "v1" and 0.0 <= p["score"] <= 1.0
    # pre-selected only where the index is confident, and then one of the texts
    assert all(q["result"][0]["value"]["choices"][0].startswith("t") for q in preds.values() if q["result"])
    assert all(q["score"] >= 0.5 for q in preds.values() if q["result"])
    assert result["ls"] == "pushed" and result["ls_unknown"] == 1
    assert result["label_to_prediction_s"] >= 1.0


def test_once_every_task_is_labelled_the_rebuild_pushes_nothing_and_does_not_fail(r, xenv, ws, fake_ls):
    """Label Studio refuses a model_version that no prediction carries (HTTP 400): with no open
    task there is nothing to push or flip, and the rebuild must not fail and retry for ever."""
    fake_ls.tasks = [task_body(1000 + i, image_id(i)) for i in range(4)]
    store = PairStore(r, "proj")
    for i in range(4):
        store.put(100 + i, 1000 + i, image_id(i), text_id(i), 1.0)
    _link(r, ws)
    result = rebuild("proj", redis_client=r)
    assert result["ls"] == "skipped: no open task" and fake_ls.pushes == [] and fake_ls.versions == []


def test_a_label_studio_error_is_told_without_its_headers():
    """Label Studio's error answers carry its session cookie in their headers: what reaches the log
    and `xmodal status` is the status and the body."""
    import httpx

    from xmodal.labelstudio.client import LabelStudioError, describe_error

    answer = httpx.Response(400, headers={"set-cookie": "sessionid=s3cr3t; HttpOnly"},
                            json={"model_version": ["Model version doesn't exist"]})
    exc = LabelStudioError.of(answer)
    told = describe_error(exc)
    assert "s3cr3t" not in told and "set-cookie" not in told
    assert "s3cr3t" not in str(exc) + repr(exc)
    assert told.startswith("LabelStudioError: HTTP 400: ") and "Model version doesn't exist" in told


def test_next_served_tasks_first_with_reranked_options(r, xenv, ws, fake_ls, monkeypatch):
    monkeypatch.setenv("XMODAL_LS_FIRST", "3")
    monkeypatch.setenv("XMODAL_PRESELECT_MIN", "0")   # a pre-selected answer whatever the confidence
    monkeypatch.setenv("XMODAL_LS_PARALLEL", "2")
    fake_ls.tasks = [task_body(1000 + i, image_id(i)) for i in range(12)]
    store = PairStore(r, "proj")
    for i in range(4):
        store.put(100 + i, 1000 + i, image_id(i), text_id(i), 1.0, received_at=time.time() - 1)
    _link(r, ws)
    seen_at_flip = {}
    real_set = fake_ls.set_model_version

    def set_model_version(pid, version):   # the latency is recorded after this, not after all
        seen_at_flip["last"] = dict(stats.last_rebuild(r, "proj"))
        real_set(pid, version)

    fake_ls.set_model_version = set_model_version
    result = rebuild("proj", redis_client=r)
    # the pages and predictions of the next-served tasks, the flip, then every other task's page
    # and prediction in chunks
    flip = fake_ls.calls.index("version")
    # predictions, then the flip
    assert fake_ls.calls[0] in ("push", "update") and "push" in fake_ls.calls[:flip]
    assert fake_ls.calls.count("version") == 1 and set(fake_ls.calls) == {"push", "update", "version"}
    first = fake_ls.pushes[0][1]
    assert sorted(fake_ls.updates[0]) == sorted(first)
    rest = {t: p for _, preds, _ in fake_ls.pushes[1:] for t, p in preds.items()}
    assert sorted([*first, *rest]) == [1000 + i for i in range(4, 12)]
    assert sorted(t for u in fake_ls.updates for t in u) == [1000 + i for i in range(4, 12)]
    # served next: the lowest scores (Uncertainty sampling) and the lowest ids (a Data Manager tab)
    by_score = sorted({**first, **rest}, key=lambda t: ({**first, **rest}[t]["score"], t))
    assert set(first) == set(by_score[:3]) | {1004, 1005, 1006}
    snap = load_current(ws, r)
    for tid, p in first.items():
        item = image_id(tid - 1000)
        data = fake_ls.updates[0][tid]
        options = [o["alias"] for o in data["options"]]
        assert options == [c for c, _ in snap.rank("image", item, None, 40)]   # every text, by the new index
        assert p["result"][0]["value"]["choices"] == [options[0]]           # top-1 = first option
        assert p["score"] == pytest.approx(snap.confidence(item), abs=1e-5)   # calibrated, in [0, 1]
        assert data["item_id"] == item and data["index_version"] == 1       # the whole page rebuilt
        assert data["model_note"].startswith("Texts ranked by model v1")
    from xmodal.labelstudio.tasks import TaskRegistry
    assert TaskRegistry(r, "proj").get(next(iter(first)))["options"] == \
        [o["alias"] for o in fake_ls.updates[0][next(iter(first))]["options"]]
    assert result["ls"] == "pushed" and result["ls_tasks"] == 8 and result["ls_options"] == len(first)
    assert result["ls_options_all"] == 8
    assert result["ls_rest"] == "done"
    last = stats.last_rebuild(r, "proj")
    assert last["ls_tasks"] == 8 and last["ls_rest"] == "done" and last["version"] == 1
    assert last["label_to_prediction_s"] >= 1.0 and stats.recent_latencies(r, "proj")
    assert seen_at_flip["last"] == {}   # nothing recorded before the flip


def _twelve_tasks_two_labelled(r, ws, fake_ls) -> PairStore:
    """12 open tasks in a linked project, the first two labelled just now."""
    fake_ls.tasks = [task_body(1000 + i, image_id(i)) for i in range(12)]
    store = PairStore(r, "proj")
    for i in range(2):
        store.put(100 + i, 1000 + i, image_id(i), text_id(i), 1.0, received_at=time.time())
    _link(r, ws)
    return store


def test_the_rest_of_a_push_stops_when_a_newer_rebuild_is_queued(r, xenv, ws, fake_ls, monkeypatch):
    monkeypatch.setenv("XMODAL_LS_FIRST", "2")
    _twelve_tasks_two_labelled(r, ws, fake_ls)
    flip = fake_ls.set_model_version

    def set_model_version(pid, version):   # a label arrives right after the flip
        flip(pid, version)
        r.set(flag_key("proj"), "someone|0")

    fake_ls.set_model_version = set_model_version
    result = rebuild("proj", redis_client=r)
    assert fake_ls.calls.count("push") == 1 and fake_ls.calls.count("version") == 1   # nothing after
    first = fake_ls.pushes[0][1]
    assert result["ls_tasks"] == len(first) <= 4 and result["ls_rest"] == "stopped: newer labels"
    assert stats.last_rebuild(r, "proj")["ls_rest"] == "stopped: newer labels"


def test_the_rest_of_a_push_waits_for_a_quiet_moment(r, xenv, ws, fake_ls, monkeypatch):
    """While a person labels quickly, the next label comes within a second or two: beyond the
    next-lowest chunk, the tasks not served next wait ``XMODAL_LS_REST_DELAY_S`` and are left to the
    newer index when a label comes meanwhile (through a real Label Studio: median 2.15 -> 1.31 s
    label -> flip)."""
    import threading

    monkeypatch.setenv("XMODAL_LS_FIRST", "2")
    monkeypatch.setenv("XMODAL_LS_REST_DELAY_S", "30")
    store = _twelve_tasks_two_labelled(r, ws, fake_ls)
    flip = fake_ls.set_model_version

    def set_model_version(pid, version):   # a label arrives a moment after the flip
        flip(pid, version)
        threading.Timer(0.3, lambda: r.set(flag_key("proj"), "someone|0")).start()

    fake_ls.set_model_version = set_model_version
    result = rebuild("proj", redis_client=r)       # returns at the label, not after 30 s
    # the first batch, then at once the next served (by score and by id), then nothing
    assert fake_ls.calls.count("push") == fake_ls.calls.count("update") == 2
    assert len(fake_ls.pushes[1][1]) == 2
    assert result["ls_rest"] == "stopped: newer labels"
    monkeypatch.setenv("XMODAL_LS_REST_DELAY_S", "0.2")
    fake_ls.set_model_version = flip
    r.delete(flag_key("proj"))
    store.put(102, 1002, image_id(2), text_id(2), 1.0, received_at=time.time())
    result = rebuild("proj", redis_client=r)       # nobody labels: the rest follows
    assert result["ls_rest"] == "done" and result["ls_tasks"] == 9


def test_the_push_takes_both_serving_orders_in_turns():
    from xmodal.labelstudio.push import serving_order

    scores = {10: 0.9, 11: 0.8, 12: 0.5, 13: 0.1, 14: 0.2, 15: 0.3}
    first, rest = serving_order(scores, 1)
    assert first == [13, 10]               # the lowest score (Uncertainty sampling), the first id
    assert rest == [14, 11, 15, 12]        # then the next of each, in turns
    assert serving_order(scores, 2)[0] == [13, 14, 10, 11]


def test_without_listing_the_task_registry_is_used(r, xenv, ws, fake_ls):
    from xmodal.labelstudio.tasks import TaskRegistry

    TaskRegistry(r, "proj").record([task_body(1005, image_id(5))])
    _link(r, ws)
    rebuild("proj", redis_client=r)
    assert list(fake_ls.pushes[0][1]) == [1005]
    # an unlabelled index proposes no caption; the score is the medoid's anytime position, shown
    # as no confidence at all (below 0.1 %)
    assert fake_ls.pushes[0][1][1005] == {"result": [], "score": round(0.001 * 5 / 12, 8),
                                          "model_version": "v1"}


def test_no_label_studio_connection_skips_the_step(r, xenv, ws, fake_ls):
    assert rebuild("proj", redis_client=r)["ls"].startswith("skipped")
    assert fake_ls.opened == []


def test_a_superseded_index_is_not_pushed(r, xenv, ws, fake_ls):
    from xmodal.index.build import build_snapshot

    _link(r, ws)
    store = IndexStore(r, ws)
    old, new = build_snapshot(ws, 1, [])[0], build_snapshot(ws, 2, [])[0]
    store.publish(new)
    assert refresh_label_studio(r, ws, old)["ls"].startswith("skipped: superseded")
    assert fake_ls.pushes == []


def test_label_studio_failure_is_reported_after_publishing(r, xenv, ws, fake_ls):
    fake_ls.fail = ConnectionError("connection refused")
    fake_ls.tasks = [task_body(1000, image_id(0))]
    _link(r, ws)
    with pytest.raises(LabelStudioPushError, match="is published, but pushing .*connection refused"):
        rebuild("proj", redis_client=r)
    assert IndexStore(r, ws).current_version() == 1
    assert stats.last_rebuild(r, "proj")["ls"].startswith("failed")


# -- workspace ---------------------------------------------------------------------------------
def test_workspace_round_trip_and_checks(xenv, tmp_path):
    from xmodal.errors import DataError

    ws = Workspace(tmp_path / "w")
    ws.save_config({"select": "text", "label_studio": {"project_id": 3}})
    ws.save_items(["a.jpg", "b.jpg"], ["/a.jpg", "/b.jpg"], ["t1"], ["hello"])
    ws.save_features("image", np.ones((2, 3)), "enc-i")
    assert ws.load_features("image").dtype == np.float32
    assert ws.features_info("image")["encoder_id"] == "enc-i"
    with pytest.raises(DataError, match="align"):
        ws.save_features("text", np.ones((2, 3)), "enc-t")
    with pytest.raises(DataError, match="no text features"):
        ws.load_features("text")
    ws.save_selection(["t1"], [0])
    assert ws.medoid_ids() == ["t1"] and ws.select == "text"
    with pytest.raises(DataError):
        ws.save_selection(["zzz"])
    assert ws.update_config(measure="cosine")["label_studio"]["project_id"] == 3
    assert not any(p.name.endswith(".tmp") for p in ws.root.rglob("*"))


# -- embedded Redis and the CLI ----------------------------------------------------------------
def test_embedded_redis_is_shared_with_child_processes(xenv, monkeypatch):
    import xmodal.redis_conn as rc

    monkeypatch.delenv("REDIS_URL")
    monkeypatch.setattr(rc, "_embedded", None)
    url = rc.redis_url()
    try:
        assert url.startswith("unix://") and os.environ["REDIS_URL"] == url
        assert str(xenv.models) in str(rc.embedded_db_path())
        rc.get_redis().set("xt-embedded", "1")
        out = subprocess.run([sys.executable, "-c", "import os, redis; print(redis.Redis.from_url("
                              "os.environ['REDIS_URL']).get('xt-embedded').decode())"],
                             env=dict(os.environ), capture_output=True, text=True, timeout=30)
        assert out.stdout.strip() == "1", out.stderr
    finally:
        server = rc._embedded
        rc._clients.pop(url, None).close()
        pid = server.pid  # stop the server this test started, by its pid (fast; no atexit hook)
        atexit.unregister(server._cleanup)
        server._cleanup = lambda *a, **k: None
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except OSError:
                break
            time.sleep(0.02)


def test_cli_wrappers(xenv, capsys):
    from xmodal.cli.main import main

    assert main(["worker", "--burst", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "worker --with-scheduler --worker-class workers.reconnect.ReconnectingWorker --burst" in out
    assert out.strip().endswith(f"{xenv.tag} {xenv.tag}-embed")   # rebuilds first, then embed chunks
    assert xenv.url not in out                       # the URL travels in $RQ_REDIS_URL
    assert main(["serve", "--port", "9999", "--workers", "3", "--dry-run"]) == 0
    assert "--bind 127.0.0.1:9999 --workers 3" in capsys.readouterr().out
    assert main(["status"]) == 0
    assert f"queue {xenv.tag}: 0 queued" in capsys.readouterr().out


def test_serve_runs_gunicorn(xenv, ws):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "xmodal.cli", "serve", "--port", str(port),
                             "--workers", "1"], env=dict(os.environ),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline, body = time.time() + 30, None
        while time.time() < deadline:
            try:
                body = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1))
                break
            except OSError:
                time.sleep(0.1)
        assert body == {"status": "UP", "model_class": "XmodalModel"}
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/webhook", method="POST",
            data=json.dumps(annotation_body("ANNOTATION_CREATED", 1, 1000, image_id(0), text_id(0),
                                            project=LS_PID)).encode(),
            headers={"Content-Type": "application/json"})
        assert json.load(urllib.request.urlopen(req, timeout=5))["status"] == "stored"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- resync from Label Studio ------------------------------------------------------------------
def _ls_task(i, annotations):
    task = task_body(1000 + i, image_id(i))
    task["annotations"] = [
        {"id": a, "was_cancelled": False, "updated_at": "2026-01-01T00:00:00Z",
         "result": [{"from_name": "caption", "to_name": "image", "type": "choices",
                     "value": {"choices": [choice]}}]} for a, choice in annotations]
    return task


def test_resync_replays_missed_webhooks(r, xenv, ws, fake_ls):
    from workers.resync import resync

    store = PairStore(r, "proj")
    store.put(77, 1077, image_id(7), text_id(7), 1.0, received_at=time.time() - 60)  # deleted in LS
    store.put(3, 1003, image_id(3), text_id(9), "2026-06-01T00:00:00Z")           # newer than LS
    fake_ls.tasks = [_ls_task(0, [(1, text_id(0))]), _ls_task(1, [(2, "__none__")]),
                     _ls_task(2, [(5, "t-unknown")]), _ls_task(3, [(3, text_id(3))]),
                     _ls_task(4, [])]
    _link(r, ws)
    out = resync("proj", redis_client=r)
    assert out["stored"] == 2 and out["stale"] == 1 and out["invalid"] == 1 and out["deleted"] == 1
    assert sorted(out["added"]) == [1, 2] and out["removed"] == [77]
    live = {p["annotation_id"]: p["text_id"] for p in store.all_pairs()}
    assert live == {1: text_id(0), 3: text_id(9)}
    assert store.records()[77]["state"] == "deleted"
    assert out["rebuild_job"] and get_queue(r).count == 1
    # a label that arrived while the listing ran is not taken for a deleted one
    store.put(88, 1088, image_id(8), text_id(8), 1.0, received_at=time.time() + 60)
    resync("proj", redis_client=r)
    assert store.get(88)["state"] == "pair"


def test_a_resync_from_a_listing_that_cannot_be_the_project_deletes_nothing(r, xenv, ws, fake_ls):
    """A fuzzing run's fake Label Studio answered the task list with nothing usable: 16 of 16
    pairs were tombstoned. A listing sharing no task with the stored annotations, or not made of
    tasks with ids, is refused and changes nothing."""
    from workers.resync import resync
    from xmodal.errors import DataError

    store = PairStore(r, "proj")
    for i in range(3):
        store.put(70 + i, 1000 + i, image_id(i), text_id(i), 1.0, received_at=time.time() - 60)
    _link(r, ws)
    for listing, says in (([], "none of the 3 tasks"), ([_ls_task(9, [])], "none of the 3 tasks"),
                          ([{}], "not tasks with ids"), ([{"id": None, "data": {}}], "not tasks with ids")):
        fake_ls.tasks = listing
        with pytest.raises(DataError, match=says):
            resync("proj", redis_client=r)
        assert len(store.all_pairs()) == 3, listing
    fake_ls.tasks = [_ls_task(0, [(70, text_id(0))])]   # the project's own listing: 71, 72 deleted
    out = resync("proj", redis_client=r)
    assert out["deleted"] == 2 and [p["annotation_id"] for p in store.all_pairs()] == [70]


def test_project_resync_command_prints_what_changed(r, xenv, ws, fake_ls, capsys):
    from xmodal.cli.main import main

    PairStore(r, "proj").put(77, 1077, image_id(7), text_id(7), 1.0, received_at=time.time() - 60)
    fake_ls.tasks = [_ls_task(0, [(1, text_id(0))])]
    _link(r, ws)
    assert main(["project", "resync", "--name", "proj", "--no-rebuild"]) == 0
    out = capsys.readouterr().out
    assert "added or changed: 1 (annotations 1)" in out
    assert "removed (deleted in Label Studio): 1 (annotations 77)" in out
    assert get_queue(r).count == 0
    assert main(["project", "resync", "--name", "proj", "--enqueue"]) == 0
    assert "-resync-" in get_queue(r).job_ids[0]


def test_start_training_resyncs_when_label_studio_is_known(r, xenv, ws, fake_ls):
    from backend.app import create_app

    _link(r, ws)
    client = create_app({"TESTING": True}).test_client()
    resp = client.post("/webhook", data=json.dumps({"action": "START_TRAINING", "project": {"id": LS_PID}}),
                       content_type="application/json")
    assert resp.status_code == 200 and resp.get_json()["job"] == "resync"
    assert "-resync-" in get_queue(r).job_ids[0]


def test_resync_without_label_studio_is_a_readable_failure(r, xenv, ws):
    from workers.resync import resync
    from xmodal.errors import DataError

    with pytest.raises(DataError, match="no Label Studio connection"):
        resync("proj", redis_client=r)


# -- what a person typed ---------------------------------------------------------------------------
class WordsEncoder:
    """Embeds a written description as the features of the text it names ("caption <i>")."""

    encoder_id = "synthetic-text"

    def __init__(self, ws):
        self.Y = ws.load_features("text")
        self.calls = 0

    def transform(self, texts):
        self.calls += 1
        return np.stack([self.Y[int(t.split()[-1])] + 0.01 for t in texts])


def test_a_written_description_is_a_reference_embedded_once(r, xenv, ws, monkeypatch):
    enc = WordsEncoder(ws)
    monkeypatch.setattr("xmodal.project.text_encoder.load_text_encoder", lambda w: enc)
    store = PairStore(r, "proj")
    for i in range(4):
        store.put(100 + i, 1000 + i, image_id(i), text_id(i), 1.0)
    store.put(104, 1004, image_id(4), None, 1.0, description="looks like caption 4", source="written")
    first = rebuild("proj", redis_client=r)
    snap = load_current(ws, r)
    assert first["pairs"] == 5 and snap.n_pairs == 5
    assert snap.written_references == {104: "looks like caption 4"}
    assert snap.pair_rows[-1].tolist() == [4, -1] and len(snap.text_refs) == 5
    # the description works like the text it describes: image 4 ranks text 4 as well as the item pair
    from xmodal.index.build import build_snapshot

    as_item, _ = build_snapshot(ws, 99, store.all_pairs()[:4] + [
        {"annotation_id": 104, "image_id": image_id(4), "text_id": text_id(4)}])
    assert [t for t, _ in snap.rank("image", image_id(20), None, 3)] == \
        [t for t, _ in as_item.rank("image", image_id(20), None, 3)]
    # embedded once: the next rebuild reads the workspace's copy
    store.put(105, 1005, image_id(5), text_id(5), 1.0)
    rebuild("proj", redis_client=r)
    assert enc.calls == 1


def test_a_text_encoder_that_cannot_load_does_not_block_the_other_pairs(r, xenv, ws):
    store = PairStore(r, "proj")
    for i in range(3):
        store.put(100 + i, 1000 + i, image_id(i), text_id(i), 1.0)
    store.put(103, 1003, image_id(3), None, 1.0, description="a dog", source="written")
    result = rebuild("proj", redis_client=r)   # "synthetic" names no loadable text encoder
    assert result["pairs"] == 3 and result["skipped_pairs"] == 1


def test_status_tells_problems_skips_and_waiting_pairs_apart(r, xenv, ws):
    from xmodal.cli.status import collect

    store = PairStore(r, "proj")
    store.put(1, 1000, image_id(0), text_id(0), 1.0)
    store.mark_none(2, 1001, 1.0)
    store.mark_problem(3, 1002, "unknown_id", "'t-typo' is not a text id", given="t-typo")
    p = collect(r, xenv.models)["projects"]["proj"]
    assert (p["pairs"], p["skips"]) == (1, 1) and p["stale"] and not p["rebuild_queued"]
    assert p["problems"] == [{"annotation": 3, "task": 1002, "problem": "unknown_id",
                              "message": "'t-typo' is not a text id", "given": "t-typo"}]
    rebuild("proj", redis_client=r)
    store.mark_none(4, 1003, 1.0)            # a skip changes no pair: nothing waits for a rebuild
    assert collect(r, xenv.models)["projects"]["proj"]["stale"] is False


def test_a_task_whose_own_fields_were_not_kept_keeps_them_through_the_push(r, xenv, ws, fake_ls,
                                                                          monkeypatch):
    """The registry keeps at most 512 bytes of a task's own fields (bounded Redis); the push then reads
    that task's data from Label Studio before it rewrites the data, so the fields survive."""
    from xmodal.labelstudio.tasks import TaskRegistry

    monkeypatch.setenv("XMODAL_LS_FIRST", "20")
    fake_ls.tasks = [task_body(1000 + i, image_id(i)) for i in range(12, 16)]
    fake_ls.tasks[0]["data"]["team_notes"] = "n" * 10_000
    TaskRegistry(r, "proj").record(fake_ls.tasks)
    assert TaskRegistry(r, "proj").get(1012)["partial"]
    _link(r, ws)
    store = PairStore(r, "proj")
    for i in range(8):
        store.put(500 + i, 900 + i, image_id(i), text_id(i), 1.0)
    rebuild("proj", redis_client=r)
    rewritten = {t: d for update in fake_ls.updates for t, d in update.items()}
    assert 1012 in rewritten and rewritten[1012]["team_notes"] == "n" * 10_000
    assert fake_ls.tasks[0]["data"]["team_notes"] == "n" * 10_000


def test_problems_are_flagged_on_their_tasks_and_cleared_when_fixed(r, xenv, ws, fake_ls):
    from xmodal.labelstudio.problems import flag_problems
    from xmodal.labelstudio.tasks import TaskRegistry

    fake_ls.tasks = [task_body(1000 + i, image_id(i)) for i in range(3)]
    TaskRegistry(r, "proj").record(fake_ls.tasks)
    _link(r, ws)
    store = PairStore(r, "proj")
    store.mark_problem(7, 1001, "no_match", "None of these was chosen and nothing was written",
                       updated_at=1.0)
    assert flag_problems(r, ws) == {"flags": 1}
    assert fake_ls.tasks[1]["data"]["problem"].endswith("None of these was chosen and nothing was written")
    assert fake_ls.tasks[1]["data"]["options"] and flag_problems(r, ws) == {"flags": "unchanged"}
    store.put(7, 1001, image_id(1), text_id(1), 2.0)        # the annotator fixed it
    assert flag_problems(r, ws) == {"flags": 1} and fake_ls.tasks[1]["data"]["problem"] == ""
