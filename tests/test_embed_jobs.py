"""Distributed feature extraction (xmodal/encoders/distributed.py + workers/embed.py): real Redis, real `xmodal worker`
processes.

The distributed rows must equal the in-process ones, in item order; a failing chunk must be
reported with what failed and where, with the finished chunks kept; a rerun computes nothing
twice. Image tests use a few real COCO-mini photos (../shared/data/coco_mini) and skip without them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from xmodal.encoders import get_encoder
from xmodal.encoders.cache import FeatureCache, content_key, embed_with_cache
from xmodal.encoders.distributed import EmbedJobError, embed_distributed, embed_queue_name

COCO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "coco_mini"

WORDS = ("a man riding a red bus down the street near tall buildings while two dogs sleep on "
         "the green grass beside a wooden bench and a woman holds an umbrella in the rain").split()


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(4, 14)))) for _ in range(n)]


def coco_images(n: int) -> list[str]:
    if not (COCO / "val2017").is_dir():
        pytest.skip(f"real COCO-mini images not found at {COCO} (see ../shared/data/README.md)")
    paths = sorted(str(p) for p in (COCO / "val2017").glob("*.jpg"))[:n]
    if len(paths) < n:
        pytest.skip(f"fewer than {n} images in {COCO / 'val2017'}")
    return paths


@pytest.fixture
def workers(xenv, tmp_path):
    """``workers(n, **env)``: n live `xmodal worker --queue <embed queue>` processes (their own
    process groups, stopped at the end), registered on return."""
    from xmodal.simulation.processes import ProcessManager, python_cli, wait_worker

    pm = ProcessManager(tmp_path / "workers")

    def start(n=2, **env):
        children = [pm.start(f"embed{k}", python_cli() + ["worker", "--queue", embed_queue_name(),
                                                           "--name", f"{xenv.tag}-embed{k}"],
                             env=dict(os.environ, **env)) for k in range(n)]
        for child in children:
            wait_worker(pm, child, xenv.redis, embed_queue_name())

    yield start
    pm.stop_all(grace=30)


def _jobs_left(r, queue: str) -> int:
    from rq import Queue

    return len(Queue(queue, connection=r))


# -- equality and order -------------------------------------------------------------------------

def test_sif_texts_distributed_equal_in_process_and_in_order(xenv, workers, tmp_path, capsys):
    texts = sentences(400) + [""]              # a failure row too (empty text)
    local = get_encoder("text", "sif", progress=False)
    expected, exp_fail = embed_with_cache(local, texts, FeatureCache(tmp_path / "a"), fit=True,
                                          progress=False)
    workers(2)
    enc = get_encoder("text", "sif", progress=False)
    got, failures = embed_distributed(enc, texts, FeatureCache(tmp_path / "b"), fit=True,
                                      chunk_size=37, progress=False,
                                      worker_cache_root=str(tmp_path / "w"))
    assert got.shape == expected.shape == (401, 50)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert enc.encoder_id == local.encoder_id    # same common component (eq. 7) fitted
    assert failures == exp_fail == [("", "empty text")]
    assert _jobs_left(xenv.redis, embed_queue_name()) == 0

    # the CLI: same rows as the in-process command
    from xmodal.cli.main import main

    (tmp_path / "t.txt").write_text("\n".join(texts[:120]) + "\n")
    assert main(["embed", "--texts", str(tmp_path / "t.txt"), "--out", str(tmp_path / "d.npy"),
                 "--cache-dir", str(tmp_path / "c1"), "--no-progress", "--distributed",
                 "--chunk-size", "25"]) == 0
    assert main(["embed", "--texts", str(tmp_path / "t.txt"), "--out", str(tmp_path / "l.npy"),
                 "--cache-dir", str(tmp_path / "c2"), "--no-progress"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "d.npy"), np.load(tmp_path / "l.npy"), atol=1e-6)
    assert "in 5 chunks" in capsys.readouterr().out


def test_coco_images_distributed_equal_in_process(xenv, workers, tmp_path):
    paths = coco_images(10) + [str(tmp_path / "missing.jpg")]
    local = get_encoder("image", "efficientnet-lite0", progress=False)
    expected, exp_fail = embed_with_cache(local, paths, FeatureCache(tmp_path / "a"), progress=False)
    workers(2)
    cache = FeatureCache(tmp_path / "b")
    enc = get_encoder("image", "efficientnet-lite0", progress=False)
    got, failures = embed_distributed(enc, paths, cache, chunk_size=3, progress=False,
                                      worker_cache_root=str(tmp_path / "w"))
    assert got.shape == (11, 1280)
    np.testing.assert_allclose(got[:10], expected[:10], atol=1e-4)
    assert np.isnan(got[10]).all() and failures == exp_fail == [(paths[10], "missing file")]
    # row order: each row is its own image's features, not a neighbour's
    for i in range(10):
        assert np.argmin(np.abs(expected[:10] - got[i]).max(axis=1)) == i

    # rerun: everything is in the coordinator's cache now, nothing is enqueued
    from rq import Queue

    again, _ = embed_distributed(enc, paths, cache, chunk_size=3, progress=False)
    np.testing.assert_array_equal(np.nan_to_num(again), np.nan_to_num(got))
    q = Queue(embed_queue_name(), connection=xenv.redis)
    assert len(q) == 0 and q.finished_job_registry.get_job_count() == 0  # results collected+deleted

    # a fresh coordinator cache: the workers' caches answer (rows come back identical)
    third, _ = embed_distributed(enc, paths, FeatureCache(tmp_path / "c"), chunk_size=3,
                                 progress=False, worker_cache_root=str(tmp_path / "w"))
    np.testing.assert_array_equal(np.nan_to_num(third), np.nan_to_num(got))


# -- failures -----------------------------------------------------------------------------------

def test_a_failing_chunk_is_retried_then_reported_and_the_rest_is_kept(xenv, workers, tmp_path,
                                                                         monkeypatch):
    monkeypatch.setenv("XMODAL_EMBED_RETRIES", "1")
    texts = sentences(60, seed=1)
    keys = [content_key(t, "text") for t in texts]
    keys[45] = "0" * 64            # the worker sees other content than the coordinator hashed
    workers(2)
    cache = FeatureCache(tmp_path / "b")
    enc = get_encoder("text", "sif", progress=False)
    with pytest.raises(EmbedJobError) as err:
        embed_distributed(enc, texts, cache, keys=keys, chunk_size=20, progress=False,
                          worker_cache_root="")
    msg = str(err.value)
    assert "chunk 3/3" in msg and "item 40" in msg and "after 2 tries" in msg, msg
    assert "not the content the coordinator hashed" in msg and "rerun" in msg, msg
    # the two good chunks are in the coordinator's cache: a rerun computes only the third
    assert len(cache.get(enc.cache_id, keys[:40])) == 40
    assert len(cache.get(enc.cache_id, keys[40:])) == 0
    good_keys = [content_key(t, "text") for t in texts]
    F, _ = embed_distributed(enc, texts, cache, keys=good_keys, chunk_size=20, progress=False,
                             worker_cache_root="", fit=True)
    ref, _ = embed_with_cache(get_encoder("text", "sif", progress=False), texts,
                              FeatureCache(tmp_path / "ref"), progress=False, fit=True)
    np.testing.assert_allclose(F, ref, atol=1e-6)


def test_no_worker_is_a_clear_error_and_leaves_no_jobs(xenv, tmp_path):
    enc = get_encoder("text", "sif", progress=False)
    with pytest.raises(EmbedJobError, match="no worker listens on queue") as err:
        embed_distributed(enc, sentences(30), FeatureCache(tmp_path / "b"), chunk_size=10,
                          progress=False, no_worker_timeout=1.0)
    assert "xmodal worker" in str(err.value)
    assert _jobs_left(xenv.redis, embed_queue_name()) == 0


def test_corpus_fitted_sif_embeds_in_process(xenv, tmp_path):
    """sif-self's per-item features depend on the corpus: no jobs, same rows as in-process."""
    texts = sentences(80, seed=2)
    notes = []
    enc = get_encoder("text", "sif", frequencies="corpus", progress=False)
    got, _ = embed_distributed(enc, texts, FeatureCache(tmp_path / "b"), fit=True,
                               progress=False, say=notes.append)
    ref, _ = embed_with_cache(get_encoder("text", "sif", frequencies="corpus", progress=False),
                              texts, FeatureCache(tmp_path / "a"), fit=True, progress=False)
    np.testing.assert_allclose(got, ref, atol=1e-6)
    assert "embedded in this process" in notes[0]
    assert _jobs_left(xenv.redis, embed_queue_name()) == 0


# -- the pieces ---------------------------------------------------------------------------------

def test_feature_cache_takes_concurrent_writers(tmp_path):
    """Six processes, released at the same instant, each opening 8 fresh cache files (the
    WAL switch races: it failed 1 open in 80 before the retry) and writing 30 batches into one
    shared file: no error, no vector lost."""
    script = textwrap.dedent(f"""
        import sys, time, numpy as np
        from xmodal.encoders.cache import FeatureCache
        w, start = int(sys.argv[1]), float(sys.argv[2])
        root = {str(tmp_path / 'cache')!r}
        for f in range(8):
            while time.time() < start + 0.2 * f:
                pass
            FeatureCache(root).put(f"fresh{{f}}", [str(w)], np.ones((1, 4), np.float32))
        c = FeatureCache(root)
        for b in range(30):
            keys = [f"{{w}}-{{b}}-{{i}}" for i in range(10)]
            c.put("enc|x", keys, np.full((10, 8), w * 1000 + b, np.float32))
    """)
    start = time.time() + 4    # after every interpreter has started
    procs = [subprocess.Popen([sys.executable, "-c", script, str(w), str(start)],
                              stderr=subprocess.PIPE, text=True) for w in range(6)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    cache = FeatureCache(tmp_path / "cache")
    for f in range(8):
        assert len(cache.get(f"fresh{f}", [str(w) for w in range(6)])) == 6
    got = cache.get("enc|x", [f"{w}-{b}-{i}" for w in range(6) for b in range(30) for i in range(10)])
    assert len(got) == 1800
    assert all(v[0] == int(k.split("-")[0]) * 1000 + int(k.split("-")[1]) for k, v in got.items())


def test_worker_listens_on_rebuilds_first_then_embed(xenv):
    from types import SimpleNamespace

    from workers.command import rq_argv

    args = SimpleNamespace(queue=None, burst=False, name=None, max_jobs=None, simple=False)
    assert rq_argv(args)[-2:] == [xenv.tag, f"{xenv.tag}-embed"]
    args.queue = "xmodal-embed"
    assert rq_argv(args)[-1] == "xmodal-embed" and xenv.tag not in rq_argv(args)


def test_project_create_workers_embed_same_workspace_features(xenv, workers, tmp_path):
    """`xmodal project create --workers-embed`: the image features come from the workers and equal
    the in-process ones (SIF texts stay in-process)."""
    from xmodal.cli.main import main

    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    lines = []
    for i, src in enumerate(coco_images(8)):
        shutil.copyfile(src, data / "images" / f"{i}.jpg")  # a link would leave the data folder
        lines.append(f'{{"id": "t{i}", "text": "{sentences(1, seed=i)[0]}", "image": "{i}.jpg"}}')
    (data / "texts.jsonl").write_text("\n".join(lines) + "\n")
    workers(2)
    common = ["project", "create", "--data", str(data), "--k", "3", "--json"]
    assert main(common + ["--name", "dist", "--workers-embed", "--cache-dir", str(tmp_path / "c1")]) == 0
    from rq import Queue, Worker

    ran = Worker.all(queue=Queue(embed_queue_name(), connection=xenv.redis))
    assert sum(w.successful_job_count for w in ran) >= 1     # the chunk(s) ran on the workers
    assert main(common + ["--name", "local", "--cache-dir", str(tmp_path / "c2")]) == 0
    from xmodal.project.workspace import Workspace

    a, b = Workspace(xenv.models / "dist"), Workspace(xenv.models / "local")
    np.testing.assert_allclose(a.load_features("image"), b.load_features("image"), atol=1e-4)
    np.testing.assert_allclose(a.load_features("text"), b.load_features("text"), atol=1e-6)
    assert a.medoid_ids() == b.medoid_ids()


def test_a_rebuild_does_not_wait_behind_the_embedding(xenv, tmp_path, make_workspace):
    """One `xmodal worker` (default queues: rebuilds, then embed chunks) busy with 48 image chunks:
    a rebuild enqueued meanwhile runs after the current chunk, not after all of them."""
    import threading

    from rq import Queue, Worker
    from rq.job import Job

    from xmodal.jobs.queueing import enqueue_rebuild

    paths = coco_images(48)
    make_workspace("proj")
    log = open(tmp_path / "worker.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "xmodal.cli", "worker", "--name",
                             f"{xenv.tag}-both"], env=dict(os.environ), stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        embed_q = Queue(embed_queue_name(), connection=xenv.redis)
        deadline = time.monotonic() + 60
        while not Worker.count(queue=embed_q):
            assert time.monotonic() < deadline, "worker did not start"
            time.sleep(0.1)
        out = {}
        enc = get_encoder("image", "efficientnet-lite0", progress=False)
        t = threading.Thread(target=lambda: out.update(F=embed_distributed(
            enc, paths, FeatureCache(tmp_path / "b"), chunk_size=1, progress=False,
            worker_cache_root="")[0]))
        t.start()
        # the chunks are queued (an empty queue before that let the rebuild run first, and the
        # test pass without testing anything), and the worker is into them
        while len(embed_q) < 40:
            time.sleep(0.005)
        while len(embed_q) > 46:
            time.sleep(0.005)
        job_id, _ = enqueue_rebuild(xenv.redis, "proj", reason="test")
        while Job.fetch(job_id, connection=xenv.redis).get_status() in ("queued", "started"):
            time.sleep(0.02)
        left = len(embed_q)
        t.join(timeout=300)
        assert left >= 20, f"the rebuild ran after the embedding ({left} chunks left)"
        assert out["F"].shape == (48, 1280) and not np.isnan(out["F"]).any()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
