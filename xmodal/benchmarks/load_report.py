"""The load benchmark's figures: label latencies, the server's histogram, the summary, the goals and the printed
report."""

from __future__ import annotations

from xmodal.benchmarks.loop_report import percentile

GOALS = {"webhook_p99_s": 0.050, "lost_pairs": 0, "label_to_prediction_p95_s": 5.0}


def label_latencies(posts: list, seen: list, served: list) -> dict:
    """For each pair-changing label: seconds to the first index holding it, and to /predict serving it."""
    to_index, to_predict, unseen = [], [], 0
    for p in posts:
        if not (p.changed and p.new_pair and p.error is None):
            continue
        hit = next(((v, t) for v, t, pairs in seen if t >= p.t_sent and pairs.get(p.annotation_id) == p.pair),
                   None)
        if hit is None:
            unseen += 1
            continue
        to_index.append(hit[1] - p.t_sent)
        t_pred = next((t for v, t in served if v >= hit[0]), None)
        if t_pred is not None:
            to_predict.append(max(t_pred, hit[1]) - p.t_sent)
    return {"to_index": to_index, "to_predict": to_predict, "not_seen": unseen}


# -- the server's figures -------------------------------------------------------------------

def parse_metrics(text: str) -> dict:
    """The webhook histogram and a few gauges from a Prometheus text exposition."""
    buckets, out = [], {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        if name.startswith("xmodal_webhook_seconds_bucket"):
            le = name.split('le="')[1].split('"')[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(value)))
        elif name.startswith(("xmodal_webhook_seconds_count", "xmodal_webhook_seconds_sum",
                              "xmodal_index_version", "xmodal_pairs", "xmodal_index_pairs")):
            out[name.split("{")[0]] = float(value)
    out["buckets"] = sorted(buckets)
    return out


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Prometheus' histogram_quantile: linear inside the bucket; the last finite bound if beyond."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank, prev_le, prev_c = q * buckets[-1][1], 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_c) / (c - prev_c) if c > prev_c else 1.0)
        prev_le, prev_c = le, c
    return prev_le


def summarize(posts: list, watch, metrics: dict, lost: dict, worker_lat: list[float],
              rebuilds: dict, load_s: float, drain_s: float) -> dict:
    lat = [p.latency_s for p in posts if p.latency_s is not None]
    errors = [p for p in posts if p.error]
    changed = sum(1 for p in posts if p.changed and not p.error)
    kinds = {k: sum(1 for p in posts if p.kind == k) for k in ("create", "update", "duplicate")}
    ll = label_latencies(posts, watch.seen, watch.served)
    buckets = metrics.get("buckets", [])
    count = metrics.get("xmodal_webhook_seconds_count", 0)
    under = next((c for le, c in buckets if le == GOALS["webhook_p99_s"]), None)
    return {
        "webhook": {"requests": len(posts), "per_s": round(len(posts) / load_s, 1) if load_s else None,
                    "errors": len(errors), "first_errors": sorted({p.error for p in errors})[:5], **kinds,
                    "client_p50_s": percentile(lat, 50), "client_p99_s": percentile(lat, 99),
                    "client_max_s": round(max(lat), 4) if lat else None,
                    "server_count": int(count),
                    "server_p50_s": _r(histogram_quantile(buckets, 0.50)),
                    "server_p99_s": _r(histogram_quantile(buckets, 0.99)),
                    "server_share_under_goal": round(under / count, 4) if under is not None and count else None},
        "rebuilds": dict(rebuilds, pair_changes=changed,
                         pairs_per_rebuild=round(changed / rebuilds["versions"], 2) if rebuilds["versions"] else None),
        "label_to_prediction": {
            "labels": sum(1 for p in posts if p.changed and p.new_pair and not p.error),
            "measured": len(ll["to_index"]), "not_seen": ll["not_seen"],
            "index_p50_s": percentile(ll["to_index"], 50), "index_p95_s": percentile(ll["to_index"], 95),
            "predict_p50_s": percentile(ll["to_predict"], 50), "predict_p95_s": percentile(ll["to_predict"], 95),
            "predict_max_s": round(max(ll["to_predict"]), 4) if ll["to_predict"] else None,
            "worker_n": len(worker_lat), "worker_p50_s": percentile(worker_lat, 50),
            "worker_p95_s": percentile(worker_lat, 95),
            "versions_seen": len(watch.seen), "versions_pruned_before_read": watch.vanished,
            "predict_errors": watch.predict_errors},
        "pairs": lost,
        "timing": {"load_s": round(load_s, 2), "drain_s": round(drain_s, 2)},
    }


def timeline(posts: list, t0: float, window_s: float = 10.0) -> list[dict]:
    """Requests and client-side webhook latency per ``window_s`` of the run."""
    out = {}
    for p in posts:
        if p.latency_s is not None:
            out.setdefault(int((p.t_sent - t0) // window_s), []).append(p.latency_s)
    return [{"from_s": k * window_s, "requests": len(v), "p50_s": percentile(v, 50), "p99_s": percentile(v, 99)}
            for k, v in sorted(out.items())]


def _r(v):
    return None if v is None else round(v, 4)


# -- the report -----------------------------------------------------------------------------

def _ms(v) -> str:
    return "–" if v is None else f"{1000 * v:.1f} ms"


def _s(v) -> str:
    return "–" if v is None else f"{v:.2f} s"


def verdicts(res: dict) -> dict:
    w, lp, pairs = res["webhook"], res["label_to_prediction"], res["pairs"]
    p99 = max(v for v in (w["client_p99_s"], w["server_p99_s"]) if v is not None) \
        if (w["client_p99_s"] or w["server_p99_s"]) else None
    # the worse of the client's view and the workers' own record (the latter covers the last pairs,
    # at the run's full index size)
    client = lp["predict_p95_s"] if lp["predict_p95_s"] is not None else lp["index_p95_s"]
    p95 = max((v for v in (client, lp["worker_p95_s"]) if v is not None), default=None)
    return {"webhook_p99": p99 is not None and p99 < GOALS["webhook_p99_s"],
            "lost_pairs": pairs["lost"] == 0 and pairs["pair_store_mismatch"] == 0 and w["errors"] == 0,
            "label_to_prediction_p95": p95 is not None and p95 < GOALS["label_to_prediction_p95_s"]}


def format_report(res: dict) -> str:
    s, w, rb, lp, pairs = res["settings"], res["webhook"], res["rebuilds"], res["label_to_prediction"], res["pairs"]
    ok = verdicts(res)
    mark = lambda good: "MET" if good else "MISSED"  # noqa: E731
    lines = [
        f"load bench: {s['annotators']} annotators x {res['timing']['load_s']:.0f} s, {s['items']} items "
        f"({s['tasks']} medoid tasks), {s['workers']} workers, gunicorn x{s['web_workers']}, {s['cpus']} CPUs, "
        f"load avg {s['load_avg_before'][0]:.2f} -> {s['load_avg_after'][0]:.2f}",
        f"webhook requests      {w['requests']} ({w['per_s']}/s; {w['create']} created, {w['update']} updated, "
        f"{w['duplicate']} duplicates), errors {w['errors']}; every task labelled after "
        f"{_s(res['timing'].get('tasks_done_after_s'))}",
        f"webhook latency       client p50 {_ms(w['client_p50_s'])}, p99 {_ms(w['client_p99_s'])}, max "
        f"{_ms(w['client_max_s'])}; server (xmodal_webhook_seconds, {w['server_count']}) p50 "
        f"{_ms(w['server_p50_s'])}, p99 {_ms(w['server_p99_s'])}",
        f"rebuilds              {rb['versions']} run ({rb['finished_jobs']} finished, {rb['failed_jobs']} failed) "
        f"for {rb['pair_changes']} pair changes: {rb['pairs_per_rebuild']} pairs per rebuild",
        f"label -> index        p50 {_s(lp['index_p50_s'])}, p95 {_s(lp['index_p95_s'])} "
        f"({lp['measured']} of {lp['labels']} labels, {lp['versions_seen']} versions seen)",
        f"label -> /predict     p50 {_s(lp['predict_p50_s'])}, p95 {_s(lp['predict_p95_s'])}, max "
        f"{_s(lp['predict_max_s'])}",
        f"worker's own latency  p50 {_s(lp['worker_p50_s'])}, p95 {_s(lp['worker_p95_s'])} "
        f"(xmodal.jobs.stats, last {lp['worker_n']} pairs)",
        f"pairs                 {pairs['acknowledged']} acknowledged, {pairs['in_index']} in the final index "
        f"v{pairs['final_version']}, {pairs['in_pair_store']} in the PairStore; lost {pairs['lost']}, "
        f"PairStore mismatches {pairs['pair_store_mismatch']} (drained in {res['timing']['drain_s']:.1f} s)",
        "goals:",
        f"  {'webhook p99 < %.0f ms' % (GOALS['webhook_p99_s'] * 1000):<30} {mark(ok['webhook_p99']):<7} "
        f"client {_ms(w['client_p99_s'])}, server {_ms(w['server_p99_s'])}",
        f"  {'no pair lost':<30} {mark(ok['lost_pairs']):<7} lost {pairs['lost']}, PairStore mismatches "
        f"{pairs['pair_store_mismatch']}, errors {w['errors']}",
        f"  {'label -> prediction p95 < {:.0f} s'.format(GOALS['label_to_prediction_p95_s']):<30} "
        f"{mark(ok['label_to_prediction_p95']):<7} "
        + (f"/predict {_s(lp['predict_p95_s'])}" if lp["predict_p95_s"] is not None
           else f"index {_s(lp['index_p95_s'])} (no /predict probe)")
        + f", workers {_s(lp['worker_p95_s'])}",
    ]
    if w["first_errors"]:
        lines.append("first errors: " + "; ".join(w["first_errors"]))
    return "\n".join(lines)
