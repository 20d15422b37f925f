"""Load benchmark: many simulated annotators against the real backend and workers (``xmodal bench load``).

``--annotators`` (default 50) threads play Label Studio annotators for ``--seconds`` (default 60).
Each one, after a random think time (``--think``, default 0–1 s), takes an unlabelled medoid task
and posts an ``ANNOTATION_CREATED`` body (:func:`xmodal.simulation.annotator.choice_payload`, the body the loop
bench and the demo post) to ``/webhook`` of a real ``xmodal serve`` (gunicorn); some of its answers
are wrong and later corrected with ``ANNOTATION_UPDATED``, and some bodies are delivered twice (Label
Studio retries). When every task is labelled the annotators keep reviewing (UPDATED). ``--workers``
(default 2) real ``xmodal worker`` processes rebuild the index of a synthetic 10k-item project
(``--items``; the features and medoids of :mod:`xmodal.benchmarks.loop`).

Measured:

- webhook latency, client side (p50/p99, every request) and the server's own
  ``xmodal_webhook_seconds`` histogram from ``GET /metrics``; requests and errors;
- rebuilds run vs pair changes received (coalescing);
- label -> new predictions, client side: from sending a pair-changing label to (a) the first
  current index version (the pointer ``/metrics`` reports as ``xmodal_index_version``) whose file
  holds that annotation's pair, and (b) the first ``POST /predict`` answering with that version or
  a newer one; plus the workers' own latencies (``xmodal.jobs.stats``, arrival -> publication);
- lost pairs: acknowledged pairs missing from the final index once the queue has drained (goal 0),
  cross-checked against the ``PairStore``.

Everything runs on 127.0.0.1 under a private Redis key prefix and queue (deleted at the end), in a
temporary ``MODEL_DIR``; every process it starts is stopped at the end, on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from xmodal.benchmarks.load_index import IndexWatch, drain, lost_pairs
from xmodal.benchmarks.load_report import GOALS, format_report, parse_metrics, summarize, timeline, verdicts
from xmodal.errors import ConfigError

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
N_OPTIONS = 10          # candidate texts per task, like a Label Studio task's options


# -- what the annotators post ---------------------------------------------------------------

@dataclass
class Post:
    """One webhook request and what came of it."""
    annotator: int
    kind: str               # create | update | duplicate
    annotation_id: int
    pair: tuple[str, str]   # (image id, text id) the annotation names after this post
    t_sent: float           # perf_counter before sending
    latency_s: float | None = None
    http: int | None = None
    status: str | None = None     # the backend's answer: stored | same | stale | ...
    changed: bool = False         # the backend enqueued (or coalesced) a rebuild for it
    new_pair: bool = False        # the annotation names another pair than before (latency measured)
    error: str | None = None


@dataclass
class Task:
    id: int
    item: str               # the medoid image
    truth: str              # its matching text
    options: list[str]


class TaskPool:
    """Unlabelled medoid tasks; each is handed to one annotator (Label Studio's overlap = 1)."""

    def __init__(self, tasks: list[Task]):
        self._tasks = list(reversed(tasks))   # pop() serves the anytime order's first medoid first
        self._lock = threading.Lock()
        self.emptied_at: float | None = None     # perf_counter when the last task was taken

    def take(self) -> Task | None:
        with self._lock:
            if not self._tasks:
                return None
            task = self._tasks.pop()
            if not self._tasks:
                self.emptied_at = time.perf_counter()
            return task

    def __len__(self) -> int:
        return len(self._tasks)


def make_tasks(medoids: list[str], truth: dict[str, str], text_ids: list[str], seed: int) -> list[Task]:
    rng = random.Random(seed)
    tasks = []
    for j, item in enumerate(medoids, 1):
        others = rng.sample(text_ids, N_OPTIONS)
        options = [truth[item]] + [t for t in others if t != truth[item]][:N_OPTIONS - 1]
        rng.shuffle(options)
        tasks.append(Task(j, item, truth[item], options))
    return tasks


def task_body(task: Task) -> dict:
    """The ``task`` object Label Studio sends with an annotation webhook."""
    return {"id": task.id, "data": {"item_id": task.item, "image": f"/data/local-files/?d={task.item}",
                                    "options": [{"value": t, "html": f"synthetic text {t}"}
                                                for t in task.options]}}


@dataclass
class LoadContext:
    url: str
    ls_project: int
    from_name: str
    to_name: str
    pool: TaskPool
    stop: threading.Event
    deadline: float                 # perf_counter
    think: tuple[float, float]
    p_wrong: float
    p_duplicate: float
    p_update: float
    max_posts: int
    posts: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    next_annotation: int = 1

    def annotation_id(self) -> int:
        with self.lock:
            self.next_annotation += 1
            return self.next_annotation - 1

    def record(self, post: Post) -> bool:
        """Keep the post; False when the run's request budget is spent."""
        with self.lock:
            self.posts.append(post)
            if len(self.posts) >= self.max_posts:
                self.stop.set()
                return False
            return True


def send(session, ctx: LoadContext, post: Post, body: dict) -> Post:
    import requests

    post.t_sent = time.perf_counter()
    try:
        resp = session.post(f"{ctx.url}/webhook", json=body, timeout=30)
        post.latency_s = time.perf_counter() - post.t_sent
        post.http = resp.status_code
        answer = resp.json() if resp.headers.get("content-type", "").startswith("application/json") else {}
        post.status = answer.get("status")
        post.changed = "job_id" in answer
        if resp.status_code >= 400:
            post.error = f"HTTP {resp.status_code}: {str(answer.get('error', resp.text))[:200]}"
    except requests.RequestException as exc:
        post.latency_s = time.perf_counter() - post.t_sent
        post.error = f"{type(exc).__name__}: {exc}"[:300]
    return post


def next_label(rng: random.Random, ctx: LoadContext, mine: list) -> tuple | None:
    """(kind, annotation id, task, choice, new pair?) of an annotator's next label, or None when there
    is nothing left: a new task (sometimes answered wrong), else a correction/review of an earlier one."""
    task = None if (mine and rng.random() < ctx.p_update) else ctx.pool.take()
    if task is not None:
        wrong = [t for t in task.options if t != task.truth]
        choice = rng.choice(wrong) if rng.random() < ctx.p_wrong else task.truth
        mine.append((ctx.annotation_id(), task, choice))
        return "create", mine[-1][0], task, choice, True
    if not mine:
        return None
    wrong = [k for k, (_, t, c) in enumerate(mine) if c != t.truth]
    k = rng.choice(wrong) if wrong else rng.randrange(len(mine))
    ann, task, previous = mine[k]
    mine[k] = (ann, task, task.truth)
    return "update", ann, task, task.truth, previous != task.truth


def annotator(i: int, ctx: LoadContext, seed: int) -> None:
    """One simulated annotator: think, label; some bodies are delivered twice (Label Studio retries)."""
    import requests

    from xmodal.simulation.annotator import choice_payload

    rng = random.Random(seed * 1000 + i)
    session = requests.Session()
    mine: list[tuple[int, Task, str]] = []     # (annotation id, task, current choice)
    last = None                                # (body, post) of the previous request
    while not ctx.stop.is_set():
        if ctx.stop.wait(rng.uniform(*ctx.think)) or time.perf_counter() >= ctx.deadline:
            break
        if last is not None and rng.random() < ctx.p_duplicate:
            body, prev = last
            post = Post(i, "duplicate", prev.annotation_id, prev.pair, 0.0)
        else:
            label = next_label(rng, ctx, mine)
            if label is None:
                break
            kind, ann, task, choice, new_pair = label
            body = choice_payload(ctx.ls_project, task_body(task), ann, choice, ctx.from_name, ctx.to_name,
                                  action="ANNOTATION_UPDATED" if kind == "update" else "ANNOTATION_CREATED")
            post = Post(i, kind, ann, (task.item, choice), 0.0, new_pair=new_pair)
        send(session, ctx, post, body)
        last = (body, post)
        if not ctx.record(post):
            break
    session.close()


# -- the run --------------------------------------------------------------------------------

def check_loopback(url: str) -> None:
    parsed = urlparse(url)
    if parsed.scheme == "unix" or (parsed.hostname or "") in LOOPBACK:
        return
    raise ConfigError(f"the load bench only talks to 127.0.0.1; REDIS_URL points at {parsed.hostname!r} "
                      "(unset it for the embedded server, or use a local one)")


def start_services(pm, env: dict, tag: str, args) -> tuple:
    """``xmodal serve`` (gunicorn) and ``--workers`` x ``xmodal worker``, as shipped."""
    from xmodal.simulation.processes import free_port, python_cli

    port = free_port()
    backend = pm.start("backend", python_cli() + ["serve", "--host", "127.0.0.1", "--port", str(port),
                                                   "--workers", str(args.web_workers)], env=env)
    nice = ["nice", "-n", str(args.worker_nice)] if args.worker_nice else []
    workers = [pm.start(f"worker-{w}", nice + python_cli() + ["worker", "--name", f"{tag}-w{w}"], env=env)
               for w in range(1, args.workers + 1)]
    return f"http://127.0.0.1:{port}", backend, workers


def run(args, say=print) -> dict:
    import requests

    from xmodal.benchmarks.loop import LS_PROJECT_PLACEHOLDER, delete_keys, restore_env, synthetic_workspace
    from xmodal.jobs import stats
    from xmodal.labelstudio.config import label_fields
    from xmodal.project.workspace import Workspace
    from xmodal.redis_conn import embedded_server, get_redis, redis_url, stop_embedded
    from xmodal.simulation.processes import ProcessManager, terminate_on_signals, wait_backend, wait_worker

    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="xmodal-load-bench-"))
    home.mkdir(parents=True, exist_ok=True)
    tag = f"xl-{uuid.uuid4().hex[:8]}"
    keys = ("MODEL_DIR", "XMODAL_REDIS_PREFIX", "XMODAL_QUEUE", "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY",
            "REDIS_URL")
    saved_env = {k: os.environ.get(k) for k in keys}
    had_embedded = embedded_server() is not None
    os.environ.update(MODEL_DIR=str(home / "models"), XMODAL_REDIS_PREFIX=tag, XMODAL_QUEUE=tag)
    for k in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY"):
        os.environ.pop(k, None)
    pm = r = watch = None
    stop = threading.Event()      # set on the way out, also on Ctrl-C: the threads stop posting
    try:
        url = redis_url()
        check_loopback(url)
        r = get_redis(url)
        r.ping()
        env = dict(os.environ, PYTHONUNBUFFERED="1", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
                   MKL_NUM_THREADS="1", REDIS_URL=url)
        pm = ProcessManager(home / "logs")
        with terminate_on_signals():
            backend_url, backend, workers = start_services(pm, env, tag, args)
            t0 = time.perf_counter()
            ws = Workspace.for_project("loadbench")
            truth = synthetic_workspace(ws, args.items, args.tasks, args.seed, say=say)
            prepare_s = time.perf_counter() - t0
            wait_backend(pm, backend, backend_url)
            for w in workers:
                wait_worker(pm, w, r, tag)
            from_name, to_name = label_fields(r, ws)
            medoids = ws.medoid_ids()
            text_ids = ws.ids("text")
            tasks = make_tasks(medoids, truth, text_ids, args.seed)
            probe_item = next(i for i in ws.ids("image") if i not in set(medoids))
            probe = {"id": 10**9, "data": {"item_id": probe_item,
                                           "options": [{"value": t} for t in text_ids[:20]]}}
            say(f"backend {backend_url} (gunicorn, {args.web_workers} workers), {args.workers} x xmodal "
                f"worker, Redis {url.split('@')[-1]}, prefix {tag}; {args.items} items, {len(tasks)} medoid "
                f"tasks (prepared in {prepare_s:.1f} s); logs {pm.log_dir}")
            ctx = LoadContext(url=backend_url, ls_project=LS_PROJECT_PLACEHOLDER, from_name=from_name,
                              to_name=to_name, pool=TaskPool(tasks), stop=stop,
                              deadline=time.perf_counter() + args.seconds, think=args.think,
                              p_wrong=args.p_wrong, p_duplicate=args.p_duplicate, p_update=args.p_update,
                              max_posts=args.max_posts)
            watch = IndexWatch(r, ws, backend_url, LS_PROJECT_PLACEHOLDER, probe, probe=args.predict_probe).start()
            load_avg_before = os.getloadavg()
            say(f"{args.annotators} annotators for {args.seconds:.0f} s (think {args.think[0]:g}-"
                f"{args.think[1]:g} s) ...")
            t_start = time.perf_counter()
            load_s = apply_load(ctx, args.annotators, args.seed, pm, [backend, *workers])
            load_avg_after = os.getloadavg()
            drain_s = drain(r, ws, tag, args.drain_timeout)
            time.sleep(0.3)     # the watcher's and the probe's last look
            watch.close()
            metrics = parse_metrics(requests.get(f"{backend_url}/metrics", timeout=30).text)
            result = summarize(ctx.posts, watch, metrics, lost_pairs(r, ws, ctx.posts),
                               stats.recent_latencies(r, ws.name), rebuild_counts(r, ws, tag),
                               load_s=load_s, drain_s=drain_s)
            result["timeline"] = timeline(ctx.posts, t_start)
            result["timing"]["tasks_done_after_s"] = None if ctx.pool.emptied_at is None \
                else round(ctx.pool.emptied_at - t_start, 2)
            result["settings"] = settings(args, len(tasks), url, tag, backend_url, load_avg_before, load_avg_after)
            return result
    finally:
        stop.set()
        if watch is not None:
            watch.close()
        if pm is not None:
            pm.stop_all(grace=5)
        if r is not None:
            delete_keys(r, tag)
        if not had_embedded and embedded_server() is not None:
            stop_embedded()
        restore_env(saved_env)
        if not args.home and not args.keep:
            shutil.rmtree(home, ignore_errors=True)


def apply_load(ctx: LoadContext, annotators: int, seed: int, pm, children) -> float:
    """Run the annotator threads until they stop (deadline or budget); seconds it took. A service
    that dies meanwhile is an error with its log."""
    threads = [threading.Thread(target=annotator, args=(i, ctx, seed), daemon=True, name=f"annotator-{i}")
               for i in range(annotators)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        for child in children:
            pm.check_alive(child, "under load")
        time.sleep(0.2)
    return time.perf_counter() - t0


def settings(args, n_tasks: int, url: str, tag: str, backend_url: str, before, after) -> dict:
    return {"annotators": args.annotators, "seconds": args.seconds, "items": args.items, "tasks": n_tasks,
            "workers": args.workers, "web_workers": args.web_workers, "worker_nice": args.worker_nice,
            "predict_probe": args.predict_probe, "think_s": list(args.think), "p_wrong": args.p_wrong,
            "p_duplicate": args.p_duplicate, "p_update": args.p_update, "redis": url.split("@")[-1],
            "prefix": tag, "backend_url": backend_url, "cpus": os.cpu_count(),
            "load_avg_before": [round(x, 2) for x in before], "load_avg_after": [round(x, 2) for x in after]}


def rebuild_counts(r, ws, queue_name: str) -> dict:
    from rq.registry import FailedJobRegistry, FinishedJobRegistry

    from xmodal.index.store import IndexStore
    from xmodal.jobs.queueing import get_queue

    q = get_queue(r, queue_name)
    return {"versions": int(r.get(IndexStore(r, ws).seq_key) or 0),
            "finished_jobs": FinishedJobRegistry(queue=q).count, "failed_jobs": FailedJobRegistry(queue=q).count}


# -- command line ---------------------------------------------------------------------------

def _think(text: str) -> tuple[float, float]:
    try:
        lo, _, hi = text.partition("-") if "-" in text.strip("-") else (text, "", text)
        lo, hi = float(lo), float(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--think wants MIN-MAX seconds, e.g. 0-1, not {text!r}") from None
    if lo < 0 or hi < lo:
        raise argparse.ArgumentTypeError("--think: 0 <= MIN <= MAX")
    return lo, hi


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--annotators", type=int, default=50, help="concurrent simulated annotators (default 50)")
    p.add_argument("--seconds", type=float, default=60.0, help="how long they label (default 60)")
    p.add_argument("--items", type=int, default=10000, help="synthetic items per modality (default 10000)")
    p.add_argument("--tasks", type=int, default=500,
                   help="medoid tasks to label (k-medoids over the images; default 500)")
    p.add_argument("--workers", type=int, default=2, help="`xmodal worker` processes (default 2)")
    p.add_argument("--web-workers", type=int, default=2, help="gunicorn workers of `xmodal serve` (default 2)")
    p.add_argument("--worker-nice", type=int, default=0, metavar="N",
                   help="run the workers under `nice -n N` (default 0: as shipped)")
    p.add_argument("--no-predict-probe", dest="predict_probe", action="store_false",
                   help="do not ask /predict for each new version (then only label -> index is measured)")
    p.add_argument("--think", type=_think, default=(0.0, 1.0), metavar="MIN-MAX",
                   help="think time per label, uniform, seconds (default 0-1)")
    p.add_argument("--p-wrong", type=float, default=0.1, help="share of wrong first answers, corrected "
                   "later by ANNOTATION_UPDATED (default 0.1)")
    p.add_argument("--p-update", type=float, default=0.1, help="chance that a step revisits an earlier "
                   "label instead of a new task (default 0.1)")
    p.add_argument("--p-duplicate", type=float, default=0.05,
                   help="chance that the previous body is delivered again (default 0.05)")
    p.add_argument("--max-posts", type=int, default=50000, help="stop after this many webhooks (default 50000)")
    p.add_argument("--drain-timeout", type=float, default=300.0,
                   help="seconds to wait for the queue to drain at the end (default 300)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--home", default=None, help="keep the workspace and logs here (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir")
    p.add_argument("--json", dest="json_out", default=None, metavar="FILE", help="also write the results as JSON")


def check_args(args) -> None:
    if args.annotators < 1 or args.workers < 1 or args.web_workers < 1:
        raise ConfigError("--annotators, --workers and --web-workers must be at least 1")
    if args.seconds <= 0 or args.max_posts < 1:
        raise ConfigError("--seconds and --max-posts must be positive")
    if args.items < 50:
        raise ConfigError("--items must be at least 50")
    if not 2 <= args.tasks < args.items:
        raise ConfigError("--tasks must be at least 2 and below --items")
    for name in ("p_wrong", "p_update", "p_duplicate"):
        if not 0 <= getattr(args, name) <= 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be between 0 and 1")


def main_args(args) -> int:
    import logging

    check_args(args)
    if not logging.getLogger().isEnabledFor(logging.DEBUG):   # keep the report readable
        for name in ("xmodal", "workers", "backend"):
            logging.getLogger(name).setLevel(logging.WARNING)
    from threadpoolctl import threadpool_limits

    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    with threadpool_limits(1, user_api="blas"):
        result = run(args, say=say)
    print(format_report(result), flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(dict(result, goals=GOALS, met=verdicts(result)), indent=1,
                                                  default=str))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m xmodal.benchmarks.load", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    try:
        return main_args(p.parse_args(argv))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
