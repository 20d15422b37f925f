"""What the loop benchmark reports (:mod:`xmodal.benchmarks.loop`): the summary of a run, the latency
against issue 25's goal, the worker's split of each label's seconds, the load average."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def percentile(values, q: float) -> float | None:
    return round(float(np.percentile(values, q)), 4) if len(values) else None


GOAL_P95_S = 1.5   # issue 25: label -> the next-served task carries it (through Label Studio)
# the worker's push up to the flip, from its rebuild stats (xmodal.labelstudio.push, ``ls.ready``):
# rebuilding the first batch's pages (PATCH), their predictions, the model_version flip
LS_SPLIT = ("ls_prep_s", "ls_rank_s", "ls_first_data_s", "ls_first_predictions_s", "ls_flip_s")
SPLIT = ("build_s", "write_s", "push_s", *LS_SPLIT, "rest_s", "queue_s", "outside_s")


def rest_s(latency, last: dict):
    """What the latency holds beyond the worker's build, write and push: the webhook, the queue, the
    work horse's fork, the annotator's polling of the new version."""
    parts = [last.get(k) for k in ("build_s", "write_s", "push_s")]
    if latency is None or parts[0] is None:
        return None
    return round(latency - sum(x or 0.0 for x in parts), 4)


def rest_split(latency, last: dict) -> dict:
    """The rest in two, by the worker's own label -> flip (``label_to_prediction_s``: from the
    webhook's arrival): ``queue_s`` (the queue, the work horse's fork, the snapshot) and
    ``outside_s`` (before the webhook arrived: the annotation's POST, Label Studio calling the
    webhook; after the flip: until the annotator sees it). ``outside_s`` can be below 0: Label
    Studio shows the new model_version as soon as it stored it, before its answer to the PATCH (a
    13 KB project) reaches the worker, whose stats time the flip at that answer."""
    worker = last.get("label_to_prediction_s")
    if latency is None or worker is None or last.get("build_s") is None:
        return {"queue_s": None, "outside_s": None}
    inside = sum(last.get(k) or 0.0 for k in ("build_s", "write_s", "push_s"))
    return {"queue_s": round(worker - inside, 4), "outside_s": round(latency - worker, 4)}


@dataclass
class BenchResult:
    settings: dict
    rows: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    end: dict = field(default_factory=dict)    # pair store and recall after the last label

    def summary(self) -> dict:
        lat = [r["latency_s"] for r in self.rows if r.get("latency_s") is not None]
        secs = [r["seconds"] for r in self.rows if r.get("seconds") is not None]
        return {"annotator": self.settings.get("annotator"), "labels": len(self.rows),
                **{k: self.end.get(k) for k in ("pairs_stored", "problems", "lost", "found_rate", "how",
                                                "shown_top10")},
                "recall@10": self.end.get("recall@10") or {"i2t": None, "t2i": None},
                "seconds_per_label_median": percentile(secs, 50),
                "latency_median_s": percentile(lat, 50), "latency_p95_s": percentile(lat, 95),
                "latency_max_s": round(max(lat), 4) if lat else None,
                "goal_p95_s": GOAL_P95_S,
                "goal_met": (percentile(lat, 95) < GOAL_P95_S) if lat else None,
                "split": {k: {"median": percentile(v, 50), "p95": percentile(v, 95)}
                          for k in SPLIT if (v := [r[k] for r in self.rows if r.get(k) is not None])},
                "busy": self.settings.get("busy"),
                "load_avg_start": self.settings.get("load_avg_start"),
                "load_avg_end": self.settings.get("load_avg_end"),
                "load1_median": percentile([r["load1"] for r in self.rows if "load1" in r], 50),
                "final": self.rows[-1] if self.rows else None}


def report_lines(result: BenchResult) -> list[str]:
    """The latency, the goal, where the seconds went (the worker's split per label) and the load."""
    s, out = result.summary(), []
    if s["latency_median_s"] is None:
        return out
    where = "Label Studio serves by the new index" if result.settings.get("label_studio") else \
        "new predictions (/predict)"
    out.append(f"label -> {where}: median {s['latency_median_s']:.3f} s, p95 {s['latency_p95_s']:.3f} s, "
               f"max {s['latency_max_s']:.3f} s; goal p95 < {GOAL_P95_S} s: "
               + ("met" if s["goal_met"] else "NOT met"))
    names = {"build_s": "build", "write_s": "write", "push_s": "push to the flip",
             "ls_prep_s": "tasks/predictions prep", "ls_rank_s": "re-rank pages",
             "ls_first_data_s": "PATCH pages", "ls_first_predictions_s": "predictions",
             "ls_flip_s": "model_version", "rest_s": "rest",
             "queue_s": "queue + fork + snapshot", "outside_s": "annotation POST + webhook + seeing the flip"}
    split = s["split"]
    if split:
        out.append("per label, median / p95 s: " + ", ".join(
            f"{names[k]} {v['median']:.3f} / {v['p95']:.3f}" for k, v in split.items()
            if k in ("build_s", "write_s", "push_s", "rest_s")))
        if "queue_s" in split:
            out.append("  the rest: " + ", ".join(
                f"{names[k]} {split[k]['median']:.3f} / {split[k]['p95']:.3f}" for k in ("queue_s", "outside_s")))
        ls = [k for k in LS_SPLIT if k in split]
        if ls:
            out.append("  the push to the flip: " + ", ".join(
                f"{names[k]} {split[k]['median']:.3f} / {split[k]['p95']:.3f}" for k in ls)
                + " (pages and predictions go in parallel)")
    la = lambda v: " / ".join(f"{x:.2f}" for x in v) if v else "?"  # noqa: E731
    out.append(f"load average (1 / 5 / 15 min): start {la(s['load_avg_start'])}, end {la(s['load_avg_end'])}, "
               f"1-min median over the labels {s['load1_median']}; {s['busy']} busy process"
               f"{'' if s['busy'] == 1 else 'es'} beside the loop, {os.cpu_count()} CPUs")
    return out
