"""The simulated annotation session: the demo's data and workspace, then every medoid labelled
in anytime order through the backend's webhook (or Label Studio), measuring after each label.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xmodal.demo.baselines import BaselineCache, baseline_metrics
from xmodal.demo.console import Console, _f, _mean2
from xmodal.errors import DataError, XmodalError
from xmodal.evaluation.ground_truth import GroundTruth
from xmodal.simulation.loop import IndexWaiter, label_loop
from xmodal.simulation.loop import summary as loop_summary
from xmodal.simulation.pages import WebhookPage

# -- data -------------------------------------------------------------------------------------

# bump when the demo's features or medoids would differ for the same inputs (invalidates its caches)
DEMO_VERSION = 1


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
    from xmodal.datasets import load_folder, synthetic

    console = console or Console(quiet=True)
    if spec == "synthetic":
        path = Path(home) / "data" / f"synthetic-n{n}-seed{seed}"
        t0 = time.perf_counter()
        path, generated = synthetic.ensure(path, n=n, seed=seed)
        if generated:
            console.say(f"generated {n} synthetic images with captions in {path} "
                        f"({time.perf_counter() - t0:.1f} s)")
        ds = load_folder(path)
        name = "synthetic"
    else:
        from xmodal.datasets import load_data

        path = Path(spec).expanduser()
        if not path.exists():
            raise DataError(f"--data {spec}: no such folder. Use --data synthetic, a folder in the "
                            "generic format (images/ + texts.jsonl) or a COCO-mini folder (pairs.json)")
        # the loader of `xmodal project create`; COCO-mini with all 5 captions per image
        ds, fmt = load_data(path, captions="all")
        name = "coco-mini" if fmt == "coco-mini" else (path.resolve().name or "folder")
    if ds.image_paths is None or ds.texts is None:
        raise DataError(f"--data {spec}: the demo needs raw images and texts to embed")
    if len(ds.pairs) == 0:
        raise DataError(f"--data {spec}: no text names its image, so there is no ground truth for the "
                        "simulated annotator; add \"image\" to the records of texts.jsonl")
    return DemoData(ds=ds, name=name, source=str(path.resolve()), fingerprint=_fingerprint_dataset(ds),
                    info={"name": name, "source": str(path.resolve()), "n_images": ds.n_images,
                          "n_texts": ds.n_texts, "n_pairs": int(len(ds.pairs)),
                          # class labels of the data (what MAP needs), not the demo's annotations
                          "class labels (for MAP)": "yes" if ds.has_labels else "no"})


# -- workspace bootstrap ----------------------------------------------------------------------

@dataclass
class Bootstrap:
    ws: object                 # xmodal.project.workspace.Workspace
    X: np.ndarray
    Y: np.ndarray
    medoid_rows: np.ndarray    # rows of the select modality, anytime order
    reused_features: bool
    timings: dict
    pool: list = field(default_factory=list)   # the diverse cold-start options


def bootstrap_workspace(data: DemoData, models_dir: Path, project: str, *, select: str, labels: int,
                        image_encoder: str, text_encoder: str, measure: str = "pearson",
                        feature_cache=None, console: Console | None = None) -> Bootstrap:
    """Create (or reuse) the demo workspace with ``xmodal project create``'s steps
    (:mod:`xmodal.project.features`, :mod:`xmodal.project.medoids`): items and features of both modalities
    (through the feature cache; reused without loading any encoder when nothing changed), then the medoids in
    anytime order."""
    from xmodal.encoders.language import resolve_text_encoder
    from xmodal.labelstudio.tasks import pool_size
    from xmodal.project.features import ensure_features
    from xmodal.project.medoids import ensure_candidate_pool, ensure_selection, resolve_k
    from xmodal.project.workspace import Workspace, other

    console = console or Console(quiet=True)
    ds = data.ds
    text_encoder, why = resolve_text_encoder(text_encoder, ds.texts)
    console.say(f"text encoder: {text_encoder} ({why})")
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
    X, Y, reused = ensure_features(ws, ds, image_encoder, text_encoder,
                                   feature_cache=feature_cache, say=console.say)
    timings["embed_s"] = round(time.perf_counter() - t0, 3)
    ws.update_config(select=select, measure=measure,
                     encoders={"image": image_encoder, "text": text_encoder},
                     label_studio={"project_id": None, "url": None},
                     demo={"features_key": key})
    t0 = time.perf_counter()
    F = X if select == "image" else Y
    k = resolve_k(min(labels, len(F)), F)
    medoid_ids, _ = ensure_selection(ws, F, select, k, seed=0)
    rows = ws.row_of(select)
    # a smaller --labels than last time keeps the stored medoids: label the first k of them
    medoid_rows = np.array([rows[m] for m in medoid_ids[:k]], dtype=np.int64)
    pool = ensure_candidate_pool(ws, Y if select == "image" else X, other(select), pool_size(ws), seed=0)
    timings["select_s"] = round(time.perf_counter() - t0, 3)
    return Bootstrap(ws=ws, X=X, Y=Y, medoid_rows=medoid_rows, reused_features=reused, timings=timings,
                     pool=pool)


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
    from xmodal.index import store as index_store

    index_store.clear_cache()
    return len(keys)


def claim_ls_project_id(client, ws, ls_id: int) -> None:
    """Make Label Studio project ``ls_id`` resolve to ``ws`` in the backend: link it in the
    workspace (the backend refuses webhooks of unlinked projects), drop the cached id ->
    workspace mapping and unlink the demo's other workspaces that claim the id (left from
    earlier runs, e.g. on another data set)."""
    from xmodal.project.workspace import list_workspaces
    from xmodal.redis_conn import gkey

    client.hdel(gkey("ls_projects"), str(int(ls_id)))
    for other_ws in list_workspaces(ws.root.parent):
        if other_ws.name == ws.name:
            continue
        with contextlib.suppress(XmodalError, OSError, ValueError, KeyError):
            if other_ws.config["label_studio"].get("project_id") == int(ls_id):
                other_ws.update_config(label_studio={"project_id": None})
    ws.update_config(label_studio={"project_id": int(ls_id)})


def webhook_project_id(project: str) -> int:
    """A stable stand-in Label Studio project id for webhook-only mode (no real one exists);
    far above the ids a Label Studio hands out."""
    import zlib

    return 900_000_000 + zlib.crc32(project.encode()) % 100_000_000


# -- the annotation session -------------------------------------------------------------------

@dataclass
class SessionResult:
    curve: list
    medoids: list
    label_times: list
    summary: dict = field(default_factory=dict)


def run_session(*, data: DemoData, boot: Bootstrap, gt: GroundTruth, client, backend_url: str,
                index: IndexWaiter, select: str, console: Console, page=None,
                ls_project: int | None = None, annotator_kind: str = "human", measure: str = "pearson",
                n_random: int = 5, baselines: BaselineCache | None = None, seed: int = 0) -> SessionResult:
    """Label every medoid with the simulated person (:func:`xmodal.simulation.loop.label_loop`),
    the next one as Label Studio would serve it; measure after each label.

    ``page``: where tasks come from and answers go (:class:`WebhookPage` by default; the demo's
    Label Studio session when it runs)."""
    from xmodal.labelstudio.config import label_fields
    from xmodal.project.pairs import PairStore
    from xmodal.simulation.annotator import Knowledge, annotator

    ds, ws = data.ds, boot.ws
    if ls_project is None:
        ls_project = webhook_project_id(ws.name)
        claim_ls_project_id(client, ws, ls_project)
    page = page or WebhookPage(ws, boot.pool, backend_url, ls_project, boot.medoid_rows)
    from_name, to_name = label_fields(client, ws)
    knowledge = Knowledge.from_dataset(ds, select, seed)
    person = annotator(annotator_kind, knowledge, select)
    pairs_store = PairStore(client, ws.name)
    curve, medoids, label_times, ref_images, ref_texts, done = [], [], [], set(), set(), []
    t_start = time.perf_counter()
    n = len(boot.medoid_rows)
    for label in label_loop(page, person, knowledge, ws, client, index=index, labels=n,
                            from_name=from_name, to_name=to_name):
        t_measure = time.perf_counter()
        done.append(label)
        rec, item_id, snap = label.record, label.item_id, label.snap
        chosen = rec.get("text_id") if select == "image" else rec.get("image_id")
        if label.state == "pair":
            img, txt = (item_id, chosen) if select == "image" else (chosen, item_id)
            ref_images.add(img)
            if txt:
                ref_texts.add(txt)
        point = {"labels": label.number, "index_version": label.version or (curve[-1]["index_version"] if curve else 0),
                 "elapsed_s": round(time.perf_counter() - t_start, 3), "how": label.answer.how,
                 "found": label.found, "state": label.state, "methods": {}}
        if snap is not None and snap.has_signal:
            point["methods"]["ssm-al"] = gt.evaluate_index(snap)
            point["recall@10_non_reference"] = gt.recall_at_10_excluding(snap, ref_images, ref_texts)
        P = np.asarray([(r, t) for r, t in _pair_rows(pairs_store, ws)], dtype=np.int64).reshape(-1, 2)
        compute = lambda: baseline_metrics(gt, boot.X, boot.Y, select, P, measure, n_random)  # noqa: E731
        point["methods"].update(baselines.get(len(P), compute) if baselines is not None else compute())
        point["timing"] = {"post_s": round(label.seconds + label.post_s, 4),
                           "rebuild_wait_s": round((label.latency_s or label.post_s) - label.post_s, 4),
                           "measure_s": round(time.perf_counter() - t_measure, 4)}
        curve.append(point)
        label_times.append(label.seconds + (label.latency_s or label.post_s) + time.perf_counter() - t_measure)
        img_row = ws.row_of("image").get(item_id if select == "image" else str(chosen))
        txt_row = ws.row_of("text").get(str(chosen) if select == "image" else item_id)
        medoids.append({
            "rank": label.number, "select": select, "how": label.answer.how, "found": label.found,
            "image_id": None if img_row is None else ds.image_ids[img_row],
            "image_path": None if img_row is None else str(ds.image_paths[img_row]),
            "text_id": None if txt_row is None else ds.text_ids[txt_row],
            "text": rec.get("description") or (None if txt_row is None else ds.texts[txt_row]),
        })
        ssm = point["methods"].get("ssm-al", {})
        rnd = point["methods"].get("random", {})
        console.progress(
            f"  label {label.number}/{n} · {label.answer.how:<7} · index v{point['index_version']} "
            f"({_pairs(snap.n_pairs if snap else 0)}) · "
            f"{_recall_text(_mean2(ssm, 'recall@10'), _mean2(rnd, 'recall@10'))} · "
            f"{label_times[-1]:.2f} s/label",
            final=(label.number == n))
    stopped = None if len(done) == n else f"Label Studio served no task after {len(done)} of {n} labels"
    last = curve[-1] if curve else {}
    summary = {"annotator": annotator_kind, **loop_summary(done, pairs_store.records()),
               "seconds_per_label": round(float(np.mean(label_times)), 4) if label_times else None,
               # where a label's seconds went: Submit -> an index holding it is published (the
               # backend and its worker), the simulated person on the page, the demo's own scoring
               "backend_s_per_label": _mean([lb.latency_s or lb.post_s for lb in done]),
               "person_s_per_label": _mean([lb.seconds for lb in done]),
               "measure_s_per_label": _mean([p["timing"]["measure_s"] for p in curve]),
               "recall@10": last.get("recall@10_non_reference") or {"i2t": None, "t2i": None},
               "stopped": stopped}
    return SessionResult(curve=curve, medoids=medoids, label_times=label_times, summary=summary)


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


def _pair_rows(pairs_store, ws):
    """(image row, text row) of the stored item pairs (written references have no text row)."""
    img, txt = ws.row_of("image"), ws.row_of("text")
    for p in pairs_store.all_pairs():
        if p.get("text_id") in txt and p.get("image_id") in img:
            yield img[p["image_id"]], txt[p["text_id"]]


def example_queries(backend_url: str, data: DemoData, gt: GroundTruth, exclude_images: set,
                    exclude_texts: set, n: int = 3, k: int = 5, rank_k: int = 1000) -> dict:
    """A few /search calls against the final index (through the backend's HTTP API): the top ``k``
    results, and where the ground-truth match ranks (``truth_rank``, 1-based, among ``ranked_of``
    candidates; None when it is not in the first ``rank_k``)."""
    import requests

    ds = data.ds
    out = {"text_to_image": [], "image_to_text": []}
    txt_rows = [t for t in gt.text_queries.tolist() if ds.text_ids[t] not in exclude_texts]
    img_rows = [i for i in gt.image_queries.tolist() if ds.image_ids[i] not in exclude_images]

    def pick(rows):
        return [rows[int(x)] for x in np.linspace(0, len(rows) - 1, min(n, len(rows)))] if rows else []

    def search(params: dict, truth: list[str]):
        r = requests.get(f"{backend_url}/search", params={**params, "k": rank_k}, timeout=30)
        if not r.ok:
            return None
        results = r.json()["results"]
        rank = next((j for j, x in enumerate(results, 1) if str(x["id"]) in set(truth)), None)
        return results[:k], rank, len(results)

    for t in pick(txt_rows):
        truth = [ds.image_ids[gt.image_of_text[t]]]
        found = search({"text_id": ds.text_ids[t]}, truth)
        if found is None:
            continue
        results, rank, of = found
        out["text_to_image"].append({
            "query": ds.texts[t], "query_id": ds.text_ids[t], "truth": truth,
            "truth_rank": rank, "ranked_of": of,
            "results": [{"id": x["id"], "path": x.get("path"), "score": x["score"]} for x in results]})
    for i in pick(img_rows):
        truth = [ds.text_ids[t] for t in gt.texts_of_image[i]]
        found = search({"image_id": ds.image_ids[i]}, truth)
        if found is None:
            continue
        results, rank, of = found
        out["image_to_text"].append({
            "query": ds.image_ids[i], "query_path": str(ds.image_paths[i]), "truth": truth,
            "truth_rank": rank, "ranked_of": of,
            "results": [{"id": x["id"], "text": x.get("text"), "score": x["score"]} for x in results]})
    return out


def _recall_text(ssm, rnd) -> str:
    """The label line's quality part; before there is a score, say why rather than print a dash."""
    if ssm is None:
        return "Recall@10 not yet (the index ranks from 2 pairs on)"
    return f"Recall@10 {_f(ssm)}" + (f" (random references {_f(rnd)})" if rnd is not None else "")


def _pairs(n: int) -> str:
    return "1 pair" if n == 1 else f"{n} pairs"
