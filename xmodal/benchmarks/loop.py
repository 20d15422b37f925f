"""Simulated-annotator benchmark of the labelling loop, through the real path.

A simulated annotator labels the medoids one by one, each the task "Uncertainty sampling" serves
next, answering from what the task's page shows (``--annotator human``, default: a shown or
filtered candidate, else a written description, :mod:`xmodal.simulation.annotator`; ``oracle`` hands
over the coupled id, the ceiling). Each label is an annotation body shaped like Label Studio 1.23's,
posted to the ML backend's ``/webhook`` (a real ``xmodal serve``), or, with ``--label-studio-url``,
created through Label Studio's API (which posts the webhook itself); the backend stores the pair in
Redis and enqueues a rebuild; a real ``xmodal worker`` (``rq worker``) builds and publishes the new
index version (and pushes the predictions to Label Studio and sets its ``model_version``). The
annotator waits for the new predictions before the next label, like a person would see them.

Measured per label:

- **latency**: from posting the label to the first moment the new predictions are visible —
  ``POST /predict`` on the backend answers with the new ``model_version`` (default), or, with
  ``--label-studio-url``, Label Studio's project shows the new ``model_version`` (the worker sets it
  after pushing every prediction);
- the worker's own split (build / write / Label Studio push, and the push's requests up to the
  flip) from ``P:{p}:rebuild:last``; the report says whether p95 met the goal (< 1.5 s,
  :data:`~xmodal.benchmarks.loop_report.GOAL_P95_S`);
- **how** the pair was found (shown / search / written / pasted / skipped), whether it is right
  (one of the medoid's texts, or a written description), seconds the annotator took;
- **quality** of the published index: Recall@10 image→text (a hit: any text of the image) and
  text→image (its image), over the items that are not references (at most ``--queries`` queries
  per direction, every non-reference item of the other modality as target).

``--json PATH`` writes ``labels``, ``pairs_stored``, ``lost``, ``found_rate``, ``shown_top10``
(per block of 10 labels: how many tasks had a right text among the first 10 lines of their page,
:func:`xmodal.simulation.loop.shown_top10`) and ``recall@10`` (``{"i2t", "t2i"}`` after the last
label) at its top level, the per-label rows below.

``--busy N`` runs N CPU-bound processes (``python -c 'while True: pass'``) beside the loop for the
whole run, stopped with the services (at the end, on an error, Ctrl-C or SIGTERM); the load
average at the start and the end, and the 1-minute one at every label, are in the report and the
JSON.

Data: ``synthetic`` (default ``--n 10000``): features of realistic size — 1280-d "image" and
384-d "text" vectors that are two different non-linear views of a shared latent mixture (40
components, 48-d) plus noise; item i of one modality is coupled with item i of the other. Or a
data folder (COCO-mini, generic format), bootstrapped with :func:`xmodal.labelstudio.project.create_project`.
Synthetic items go through Label Studio too (:func:`synthetic_label_studio`: tasks whose image
URLs nothing serves; the pages carry the texts as a data folder's do).

Usage::

    python -m xmodal.benchmarks.loop --data synthetic --n 10000 --labels 30
    python -m xmodal.benchmarks.loop --data /path/to/coco_mini --labels 20
    python -m xmodal.benchmarks.loop --data /path/to/coco_mini --labels 20 \\
        --label-studio-url http://127.0.0.1:8080 --api-key TOKEN
    python -m xmodal.benchmarks.loop --data synthetic --n 5000 --labels 30 --busy 1 \\
        --label-studio-url http://127.0.0.1:8080 --api-key TOKEN

Everything runs under its own Redis key prefix and queue (deleted at the end) and a temporary
``MODEL_DIR``; the processes it starts are stopped on exit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from xmodal import settings
from xmodal.benchmarks.loop_report import LS_SPLIT, BenchResult, load_average, report_lines, rest_s, rest_split
from xmodal.errors import ConfigError

LS_PROJECT_PLACEHOLDER = 900001   # Label Studio project id the workspace claims without Label Studio


# -- data -------------------------------------------------------------------------------------

def synthetic_features(n: int, d_image: int = 1280, d_text: int = 384, d_latent: int = 48,
                       components: int = 40, noise: float = 1.5, seed: int = 0):
    """(X, Y): two non-linear views of a shared latent Gaussian mixture; row i of X <-> row i of Y."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=2.0, size=(components, d_latent))
    comp = rng.integers(components, size=n)
    Z = centres[comp] + rng.normal(size=(n, d_latent))
    A = rng.normal(size=(d_latent, d_image)) / np.sqrt(d_latent)
    B = rng.normal(size=(d_latent, d_text)) / np.sqrt(d_latent)
    X = np.maximum(Z @ A, 0.0) + noise * rng.normal(size=(n, d_image))   # ReLU-like CNN features
    Y = np.tanh(Z @ B) + noise * 0.5 * rng.normal(size=(n, d_text))     # bounded sentence vectors
    return X.astype(np.float32), Y.astype(np.float32)


def synthetic_workspace(ws, n: int, k: int, seed: int = 0, say=print, link: bool = True, enhance=None):
    """A workspace of synthetic items (no files), its medoids; returns the (image, text) truth.
    ``link``: claim :data:`LS_PROJECT_PLACEHOLDER` as its Label Studio project (no Label Studio);
    ``enhance``: the index's enhancements (None: a new project's)."""
    from xmodal.project.medoids import ensure_selection

    t0 = time.perf_counter()
    X, Y = synthetic_features(n, seed=seed)
    image_ids = [f"syn/{i:06d}.jpg" for i in range(n)]
    text_ids = [f"t{i:06d}" for i in range(n)]
    ws.root.mkdir(parents=True, exist_ok=True)
    ws.save_config({"select": "image", "measure": "pearson",
                    "encoders": {"image": "synthetic-1280", "text": "synthetic-384"},
                    **({"enhance": enhance} if enhance is not None else {}),
                    **({"label_studio": {"project_id": LS_PROJECT_PLACEHOLDER}} if link else {})})
    ws.save_items(image_ids, [f"/synthetic/{i}" for i in image_ids], text_ids,
                  [f"synthetic text {i}" for i in range(n)])
    ws.save_features("image", X, "synthetic-1280")
    ws.save_features("text", Y, "synthetic-384")
    say(f"synthetic features: {n} x {X.shape[1]} images, {n} x {Y.shape[1]} texts "
        f"({time.perf_counter() - t0:.1f} s)")
    t0 = time.perf_counter()
    medoids, _ = ensure_selection(ws, X, "image", k, seed)
    say(f"{k} medoids by k-medoids on {n} images ({time.perf_counter() - t0:.1f} s)")
    return {image_ids[i]: text_ids[i] for i in range(n)}


SYNTHETIC_IMAGES = "http://127.0.0.1:9/synthetic/"   # the tasks' image URLs: nothing serves them


def synthetic_label_studio(ws, args, backend_url: str, title: str, r, say=print):
    """A Label Studio project for a synthetic workspace, as ``xmodal project create`` makes one for a
    data folder (its Label Studio steps): the medoids as tasks (image URLs under
    :data:`SYNTHETIC_IMAGES`, which no one loads), the first index, the ML backend, the initial
    predictions. Returns the BootstrapResult."""
    from xmodal.labelstudio.client import connect
    from xmodal.labelstudio.config import read_label_config
    from xmodal.labelstudio.project import BootstrapResult, ProjectSpec, label_studio_steps
    from xmodal.labelstudio.tasks import pool_size
    from xmodal.project.medoids import ensure_candidate_pool

    t0 = time.perf_counter()
    client = connect(args.label_studio_url, args.api_key)
    label_xml, template = read_label_config("image")
    spec = ProjectSpec(name=ws.name, data=str(ws.root), title=title, label_studio_url=args.label_studio_url,
                       api_key=args.api_key, backend_url=backend_url, images=SYNTHETIC_IMAGES)
    pool = ensure_candidate_pool(ws, ws.load_features("text"), "text", pool_size(ws), args.seed)
    medoids = ws.medoid_ids()
    result = BootstrapResult(ws=ws, k=len(medoids), medoid_ids=medoids, candidate_pool=pool)
    label_studio_steps(client, spec, ws, medoids, pool, label_xml, template, result,
                        lambda m: say("  " + m), r)
    result.timings["label_studio_s"] = round(time.perf_counter() - t0, 3)
    return result


# -- measurement helpers ----------------------------------------------------------------------

def recall_non_reference(snap, truth: dict[str, str], exclude: set, max_queries: int = 1000,
                         seed: int = 0) -> dict:
    """Recall@10 both directions over coupled items that are not references."""
    from xmodal.core.metrics import recall_at_k

    if snap is None or not snap.has_signal:
        return {"recall@10_i2t": None, "recall@10_t2i": None}
    img_rows, txt_rows = snap.rows("image"), snap.rows("text")
    pairs = [(img_rows[i], txt_rows[t]) for i, t in truth.items()
             if i not in exclude and t not in exclude and i in img_rows and t in txt_rows]
    P = np.asarray(pairs, dtype=np.int64)
    Ci, Ct = snap.image_codes[P[:, 0]], snap.text_codes[P[:, 1]]
    rng = np.random.default_rng(seed)
    q = np.sort(rng.choice(len(P), min(max_queries, len(P)), replace=False))
    out = {}
    for name, Q, T in (("i2t", Ci, Ct), ("t2i", Ct, Ci)):
        S = Q[q] @ T.T
        out[f"recall@10_{name}"] = round(recall_at_k(S, q, (10,))[10], 4)
    out["chance"] = round(10 / len(P), 4)
    return out


def delete_keys(r, tag: str) -> None:
    """Remove a run's private Redis keys (best effort: Redis may be gone by now)."""
    with contextlib.suppress(Exception):
        keys = list(r.scan_iter(match=f"*{tag}*", count=1000))
        if keys:
            r.delete(*keys)


def restore_env(saved: dict) -> None:
    """Put back the environment variables a run changed (``None`` = was unset)."""
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


# -- the run ----------------------------------------------------------------------------------

def run(args, say=print) -> BenchResult:
    import redis
    import requests

    from xmodal.index.store import IndexStore
    from xmodal.jobs import stats
    from xmodal.project.medoids import candidate_pool
    from xmodal.project.pairs import PairStore
    from xmodal.project.workspace import Workspace, parse_enhance
    from xmodal.redis_conn import get_redis, redis_url
    from xmodal.simulation.annotator import Knowledge, annotator
    from xmodal.simulation.loop import IndexWaiter, label_loop, summary
    from xmodal.simulation.pages import LabelStudioPage, WebhookPage
    from xmodal.simulation.processes import (
        BUSY_CODE,
        ProcessManager,
        free_port,
        start_backend,
        start_busy,
        start_worker,
        wait_backend,
        wait_worker,
    )

    if args.labels < 2:
        raise ConfigError("--labels must be at least 2")
    enhance = None if args.enhance is None else parse_enhance(args.enhance)   # ConfigError names a bad one
    if args.data == "synthetic" and args.labels > args.n:
        raise ConfigError(f"--labels {args.labels} is more than the {args.n} synthetic items: at most "
                          f"--labels {args.n} (or raise --n)")
    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="xmodal-loop-bench-"))
    home.mkdir(parents=True, exist_ok=True)
    tag = f"xb-{uuid.uuid4().hex[:8]}"
    saved_env = {k: os.environ.get(k) for k in ("MODEL_DIR", "XMODAL_REDIS_PREFIX", "XMODAL_QUEUE",
                                                 "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY")}
    os.environ.update(MODEL_DIR=str(home / "models"), XMODAL_REDIS_PREFIX=tag, XMODAL_QUEUE=tag)
    if args.label_studio_url:
        os.environ.update(LABEL_STUDIO_URL=args.label_studio_url, LABEL_STUDIO_API_KEY=args.api_key or "")
    else:
        os.environ.pop("LABEL_STUDIO_URL", None)
        os.environ.pop("LABEL_STUDIO_API_KEY", None)
    url = redis_url()
    r = get_redis(url)
    try:
        r.ping()
    except redis.RedisError as exc:
        raise ConfigError(f"cannot reach Redis ({exc}); set REDIS_URL or unset it for the embedded one")
    pm = ProcessManager(home / "logs")
    result = BenchResult(settings={"data": args.data, "n": args.n, "labels": args.labels,
                                   "annotator": args.annotator, "captions": args.captions,
                                   "worker": args.worker, "label_studio": bool(args.label_studio_url),
                                   "busy": args.busy, "enhance": enhance, "redis": url.split("@")[-1],
                                   "home": str(home),
                                   "load_avg_start": load_average(), "cpus": os.cpu_count()})
    env = dict(os.environ, PYTHONUNBUFFERED="1", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", REDIS_URL=url)
    try:
        # CPU-bound neighbours for the whole run (stopped with the services in `finally`)
        result.settings["busy_pids"] = [c.pid for c in start_busy(pm, args.busy)]
        if args.busy:
            say(f"{args.busy} busy process{'' if args.busy == 1 else 'es'} beside the loop (`python -c "
                f"'{BUSY_CODE}'`): pid {', '.join(map(str, result.settings['busy_pids']))}")
        # services boot while the data is prepared
        port = free_port()
        worker = start_worker(pm, env, simple=(args.worker == "simple"))
        backend = start_backend(pm, env, port)
        backend_url = f"http://127.0.0.1:{port}"

        t0 = time.perf_counter()
        name = "loopbench"
        ls_pid = LS_PROJECT_PLACEHOLDER
        gt = None
        if args.data == "synthetic":
            ws = Workspace.for_project(name)
            # through Label Studio, spare medoids stay open: the last label's push needs an open task
            k = args.labels + (args.spare if args.label_studio_url else 0)
            truth = synthetic_workspace(ws, args.n, min(k, args.n), args.seed, say,
                                        link=not args.label_studio_url, enhance=enhance)
            knowledge = Knowledge({i: {t} for i, t in truth.items()},
                                  dict(zip(ws.ids("image"), ws.contents("text"))))
            if args.label_studio_url:
                wait_backend(pm, backend, backend_url)   # ml.create calls /health and /setup
                boot = synthetic_label_studio(ws, args, backend_url, f"xmodal simulate {tag}", r, say)
                result.timings["bootstrap"] = boot.timings
                ls_pid = boot.ls_project_id
        else:
            from xmodal.datasets import load_data
            from xmodal.evaluation.ground_truth import GroundTruth
            from xmodal.labelstudio.project import ProjectSpec, create_project

            spec = ProjectSpec(name=name, data=args.data, k=args.labels + args.spare, captions=args.captions,
                               enhance=enhance,
                               title=f"xmodal simulate {tag}",   # a project of its own in that Label Studio
                               label_studio_url=args.label_studio_url, api_key=args.api_key,
                               backend_url=backend_url if args.label_studio_url else None,
                               images="inline" if args.label_studio_url else "auto")
            if args.label_studio_url:
                wait_backend(pm, backend, backend_url)   # ml.create calls /health and /setup
            boot = create_project(spec, say=lambda m: say("  " + m), redis_client=r)
            result.timings["bootstrap"] = boot.timings
            ws = boot.ws
            ds, _ = load_data(args.data, captions=args.captions)
            gt = GroundTruth(ds, max_queries=args.queries, seed=args.seed)
            knowledge = Knowledge.from_dataset(ds, "image", args.seed)
            truth = {}
            for i, t in ds.pairs:
                truth.setdefault(ds.image_ids[i], ds.text_ids[t])
            if boot.ls_project_id is not None:
                ls_pid = boot.ls_project_id
            else:   # let the backend resolve the webhooks' project id to this workspace
                ws.update_config(label_studio={"project_id": ls_pid})
        medoids = ws.medoid_ids()
        result.timings["prepare_s"] = round(time.perf_counter() - t0, 3)
        wait_backend(pm, backend, backend_url)
        wait_worker(pm, worker, r)
        select = ws.select
        if select != "image":
            raise ConfigError("the loop bench labels image medoids (select=image)")
        from xmodal.labelstudio.config import label_fields

        from_name, to_name = label_fields(r, ws)
        store, pairs_store = IndexStore(r, ws), PairStore(r, name)
        ls_client = None
        if args.label_studio_url:
            from xmodal.labelstudio.client import connect

            ls_client = connect(args.label_studio_url, args.api_key)
            page = LabelStudioPage(ls_client, ls_pid, select)
        else:
            rows = ws.row_of("image")
            page = WebhookPage(ws, candidate_pool(ws), backend_url, ls_pid,
                               [rows[m] for m in medoids[:args.labels]])
        person = annotator(args.annotator, knowledge, select)
        # a task that stays unlabelled: the /predict probe
        probe_item = medoids[args.labels] if len(medoids) > args.labels else \
            next(i for i in ws.ids("image") if i not in set(medoids))
        probe = {"id": 10**9, "data": {"item_id": probe_item, "options": [
            {"value": t} for t in list(truth.values())[:20]]}}
        session = requests.Session()

        def predict_version() -> str:
            body = {"tasks": [probe], "project": f"{ls_pid}.0", "label_config": "", "params": {}}
            resp = session.post(f"{backend_url}/predict", json=body, timeout=30)
            resp.raise_for_status()
            return resp.json()["model_version"]

        say(f"backend {backend_url}, worker pid {worker.pid} ({args.worker}), "
            f"{'Label Studio ' + args.label_studio_url if ls_client else 'no Label Studio'}, "
            f"{args.annotator} annotator; logs {pm.log_dir}")
        header = f"{'label':>5} {'how':>8} {'index':>6} {'R@10 i2t':>9} {'R@10 t2i':>9} {'latency s':>10} " \
                 f"{'build s':>8} {'write s':>8} {'push s':>7} {'rest s':>7} {'load1':>6}"
        say(header)
        refs_i, refs_t, done = set(), set(), []

        def visible(version: int) -> bool:
            if ls_client is not None:
                return ls_client.get_project(ls_pid)["model_version"] == f"v{version}"
            return predict_version() == f"v{version}"

        index = IndexWaiter(store, timeout=args.timeout, visible=visible,
                            check_alive=lambda: pm.check_alive(worker, "rebuilding"),
                            hint=lambda: f"; worker log {worker.log_path}")
        for label in label_loop(page, person, knowledge, ws, r, index=index, labels=args.labels,
                                from_name=from_name, to_name=to_name, record_timeout=args.timeout):
            done.append(label)
            rec, last = label.record, {}
            if label.state == "pair":
                t_wait = time.monotonic() + 5   # the worker records its timings after the push
                while (last := stats.last_rebuild(r, name)).get("version") != label.version \
                        and time.monotonic() < t_wait:
                    time.sleep(0.01)
                refs_i.add(label.item_id)
                if rec.get("text_id"):
                    refs_t.add(rec["text_id"])
            snap = label.snap
            recall = gt.recall_at_10_excluding(snap, refs_i, refs_t) if gt is not None else \
                _recall_dict(recall_non_reference(snap, truth, refs_i | refs_t, args.queries, args.seed))
            latency = label.latency_s
            row = {"labels": label.number, "how": label.answer.how, "found": label.found,
                   "shown_top10": label.shown_top10,
                   "state": label.state, "version": label.version,
                   "latency_s": None if latency is None else round(latency, 4),
                   "seconds": round(label.seconds, 4), "build_s": last.get("build_s"),
                   "write_s": last.get("write_s"), "push_s": last.get("push_s"),
                   "worker_total_s": last.get("total_s"),
                   **{k: last.get(k) for k in LS_SPLIT},
                   "rest_s": rest_s(latency, last), **rest_split(latency, last), "load1": round(os.getloadavg()[0], 2),
                   "recall@10_i2t": recall["i2t"], "recall@10_t2i": recall["t2i"]}
            result.rows.append(row)
            f = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
            version = label.version
            say(f"{label.number:>5} {label.answer.how:>8} {'v' + str(version) if version else '–':>6} "
                f"{f(row['recall@10_i2t']):>9} {f(row['recall@10_t2i']):>9} {f(latency):>10} "
                f"{f(row['build_s']):>8} {f(row['write_s']):>8} {f(row['push_s']):>7} "
                f"{f(row['rest_s']):>7} {row['load1']:>6.2f}")
        final = result.rows[-1] if result.rows else {}
        result.end = {**summary(done, pairs_store.records()),
                      "recall@10": {"i2t": final.get("recall@10_i2t"), "t2i": final.get("recall@10_t2i")}}
        s = result.summary()
        say(f"{s['labels']} labels ({', '.join(f'{k} {v}' for k, v in s['how'].items() if v)}): "
            f"{s['pairs_stored']} pairs stored, {s['problems']} problems, {s['lost']} lost, found rate "
            f"{s['found_rate']}; Recall@10 non-reference i2t {s['recall@10']['i2t']}, t2i {s['recall@10']['t2i']}")
        if s["shown_top10"]:
            say("a right text among the page's first 10 lines: " + ", ".join(
                f"labels {b['labels']} {b['shown_top10']}/{b['tasks']}" for b in s["shown_top10"]))
        result.settings["load_avg_end"] = load_average()
        for line in report_lines(result):
            say(line)
        return result
    finally:
        pm.stop_all(grace=5)
        delete_keys(r, tag)
        restore_env(saved_env)
        if not args.home and not args.keep:
            shutil.rmtree(home, ignore_errors=True)


def _recall_dict(out: dict) -> dict:
    return {"i2t": out.get("recall@10_i2t"), "t2i": out.get("recall@10_t2i")}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="synthetic", help="'synthetic' (default) or a data folder (COCO-mini, "
                   "generic format)")
    p.add_argument("--n", type=int, default=10000, help="synthetic items per modality (default 10000)")
    p.add_argument("--labels", type=int, default=30, help="labels to simulate (default 30)")
    p.add_argument("--annotator", choices=("human", "oracle"), default="human",
                   help="human (default): answers from what each task's page shows (a shown or "
                   "filtered candidate, else a written description); oracle: the coupled id (ceiling)")
    p.add_argument("--captions", choices=("all", "first"), default="all",
                   help="COCO-mini: every caption of an image is a text item (default), or the first")
    p.add_argument("--spare", type=int, default=4, help="extra medoids left unlabelled (data folders, "
                   "and synthetic data through Label Studio)")
    p.add_argument("--worker", choices=("fork", "simple"), default="fork",
                   help="fork: `xmodal worker` as shipped (a work horse per job, default); simple: "
                   "rq's SimpleWorker (jobs in the worker process)")
    p.add_argument("--label-studio-url", default=None, metavar="URL",
                   help="also push predictions to this Label Studio; latency is then measured to "
                   "Label Studio's model_version (synthetic tasks carry image URLs nothing serves)")
    p.add_argument("--api-key", default=settings.get("LABEL_STUDIO_API_KEY"), metavar="KEY")
    p.add_argument("--queries", type=int, default=1000, help="queries per direction for Recall@10")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for one label's predictions")
    p.add_argument("--busy", type=int, default=0, metavar="N",
                   help="N CPU-bound processes (a Python busy loop each) beside the loop for the whole "
                   "run, always stopped at its end (default 0)")
    p.add_argument("--enhance", metavar="NAMES", default=None,
                   help="the index's enhancements, as `xmodal project create --enhance` takes them "
                   "(e.g. zscore-medoids,zscore,csls,bridge,map; 'none' = faithful SSM-AL). Default: "
                   "a new project's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--home", default=None, help="keep the workspace and logs here (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir")
    p.add_argument("--json", dest="json_out", default=None, metavar="FILE", help="write the results as JSON")


def main_args(args) -> int:
    import logging

    if not logging.getLogger().isEnabledFor(logging.DEBUG):   # keep the table readable
        for name in ("xmodal", "workers", "backend", "httpx"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if args.data != "synthetic" and not Path(args.data).is_dir():
        raise ConfigError(f"--data {args.data}: no such folder")
    if args.busy < 0:
        raise ConfigError("--busy must be 0 or more")
    try:
        from threadpoolctl import threadpool_limits
        limit = threadpool_limits(1, user_api="blas")
    except ImportError:  # pragma: no cover
        limit = contextlib.nullcontext()
    from xmodal.simulation.processes import terminate_on_signals

    with limit, terminate_on_signals():   # SIGTERM too stops the services and --busy processes
        result = run(args)
    if args.json_out:
        summary = result.summary()
        Path(args.json_out).write_text(json.dumps({**{k: summary[k] for k in (
            "labels", "pairs_stored", "lost", "found_rate", "shown_top10", "recall@10")}, "settings": result.settings,
            "summary": summary, "rows": result.rows, "timings": result.timings}, indent=1, default=str))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m xmodal.benchmarks.loop", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return main_args(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
