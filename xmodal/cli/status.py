"""``xmodal status``: queues, workers, each project's pairs / problems / index / last rebuild,
failures.

A project's answers are told apart: pairs (in the index, or waiting for a rebuild that is queued,
running, or -- say so -- not queued at all), skips, and problems (annotations that could not become
a pair, each with what the annotator entered and what to do: ``xmodal.project.pairs``)."""

from __future__ import annotations

import json
import time

from xmodal import settings


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "status", help="show queues, workers, indexes and failed rebuilds",
        description="Show the RQ queues and workers, each project's pairs, skips and problems, its "
        "current index version and last rebuild, and recent failed rebuilds. Reads $REDIS_URL, else "
        "the embedded Redis that `xmodal serve`, `xmodal worker` or `xmodal demo` started for this "
        "$MODEL_DIR (default ./models); it never starts a Redis server itself.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--failures", type=int, default=5, help="failed jobs to show (default 5)")
    p.set_defaults(func=run)


def collect(redis_client, base, queue: str | None = None, n_failures: int = 5) -> dict:
    from rq import Worker
    from rq.job import Job
    from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

    from xmodal.index.store import IndexStore
    from xmodal.jobs import stats
    from xmodal.jobs.queueing import embed_queue_for, flag_key, get_queue, stuck_flag
    from xmodal.labelstudio.connection import ConnectionRecord
    from xmodal.project.pairs import PairStore
    from xmodal.project.pending import PendingItems
    from xmodal.project.pending import last_run as last_items
    from xmodal.project.workspace import Workspace, list_workspaces

    q = get_queue(redis_client, queue)
    failed = FailedJobRegistry(queue=q)
    failures = []
    for job_id in failed.get_job_ids(0, max(n_failures, 1) - 1):
        try:
            job = Job.fetch(job_id, connection=redis_client)
        except Exception:  # expired meanwhile
            continue
        result = job.latest_result()
        exc = (result.exc_string if result is not None else "") or ""
        lines = [ln for ln in exc.strip().splitlines() if ln.strip()]
        failures.append({"job": job_id, "project": (job.meta or {}).get("project"),
                         "ended_at": job.ended_at.isoformat() if job.ended_at else None,
                         "error": lines[-1] if lines else "(no exception recorded)"})
    eq = get_queue(redis_client, embed_queue_for(q.name))
    out = {
        "queue": {"name": q.name, "queued": q.count, "started": StartedJobRegistry(queue=q).count,
                  "scheduled": ScheduledJobRegistry(queue=q).count, "failed": failed.count},
        "embed_queue": {"name": eq.name, "queued": eq.count,
                        "started": StartedJobRegistry(queue=eq).count,
                        "failed": FailedJobRegistry(queue=eq).count},
        "workers": [{"name": w.name, "state": w.get_state(),
                     "job": w.get_current_job_id()} for w in Worker.all(queue=q)],
        "failures": failures, "projects": {},
    }
    names = set(stats.known_projects(redis_client)) | {w.name for w in list_workspaces(base)}
    now = time.time()
    for name in sorted(names):
        ws = Workspace(base / name)
        info = IndexStore(redis_client, ws).info()
        last = stats.last_rebuild(redis_client, name)
        pairs = PairStore(redis_client, name)
        records = list(pairs.records().values())
        waiting = bool(last) and pairs.changes() > int(last.get("changes", 0)) or \
            (not last and any(x.get("state") == "pair" for x in records))
        problems = [{"annotation": x["annotation_id"], "task": x.get("task_id"),
                     "problem": x.get("problem"), "message": x.get("message"),
                     "given": (x.get("given") or "")[:120]}
                    for x in sorted(records, key=lambda x: x.get("received_at") or 0)
                    if x.get("state") == "problem"]
        out["projects"][name] = {
            "workspace": str(ws.root) if ws.exists() else None,
            "pairs": sum(1 for x in records if x.get("state") == "pair"),
            "written_references": sum(1 for x in records
                                      if x.get("state") == "pair" and x.get("description")),
            "skips": sum(1 for x in records if x.get("state") == "none"),
            "problems": problems,
            # pairs changed after the last rebuild's snapshot: a rebuild is due (queued or running?)
            "stale": waiting,
            "rebuild_queued": bool(redis_client.exists(flag_key(name))),
            # the flag names a rebuild that will never run: later labels would wait on it
            "rebuild_flag_stuck": stuck_flag(redis_client, name),
            "index_version": int(info["version"]) if info.get("version") else None,
            "index_pairs": int(info["n_pairs"]) if info.get("n_pairs") else 0,
            "index_age_s": round(now - float(info["built_at"]), 1) if info.get("built_at") else None,
            "last_rebuild": last or None,
            # items received and not yet embedded; what the last growth run did (workers/growth.py)
            "items_pending": PendingItems(redis_client, name).counts(),
            "last_items": last_items(redis_client, name),
            # a /setup named a Label Studio that is not configured: nothing is sent there
            "ls_refused_url": ConnectionRecord(redis_client, name).refused(),
        }
    return out


def run(args) -> int:
    import logging

    from xmodal.project.workspace import list_workspaces
    from xmodal.redis_conn import get_redis, model_dir, redact, running_embedded_url

    if not getattr(args, "debug", False):
        logging.getLogger("xmodal").setLevel(logging.WARNING)  # the output below says which Redis
    url = settings.get("REDIS_URL")
    source = "REDIS_URL"
    if not url:
        # read-only: attach to a running embedded server, never start one (it would outlive us)
        url, source = running_embedded_url(), "embedded"
    if not url:
        names = [w.name for w in list_workspaces(model_dir())]
        if args.json:
            print(json.dumps({"redis": None, "projects": names}, indent=1))
            return 0
        print(f"redis: REDIS_URL is unset and no embedded Redis is running for MODEL_DIR={model_dir()} "
              "(`xmodal serve`, `xmodal worker` or `xmodal demo` start one); set REDIS_URL to read "
              "another Redis")
        print("workspaces: " + (", ".join(names) if names else f"none in {model_dir()}"))
        return 0
    data = collect(get_redis(url), model_dir(), n_failures=args.failures)
    data["redis"] = {"url": redact(url), "source": source}
    if args.json:
        print(json.dumps(data, indent=1, default=str))
        return 0
    print(f"redis: {data['redis']['url']} ({data['redis']['source']})")
    q = data["queue"]
    print(f"queue {q['name']}: {q['queued']} queued, {q['started']} running, "
          f"{q['scheduled']} scheduled (retry backoff), {q['failed']} failed")
    e = data["embed_queue"]
    if e["queued"] or e["started"] or e["failed"]:
        print(f"queue {e['name']} (feature extraction): {e['queued']} queued, {e['started']} running, "
              f"{e['failed']} failed")
    print(f"workers: {len(data['workers'])}")
    for w in data["workers"]:
        print(f"  {w['name']}: {w['state']}" + (f" ({w['job']})" if w["job"] else ""))
    print("projects:" if data["projects"] else "projects: none")
    for name, p in data["projects"].items():
        idx = (f"index v{p['index_version']} with {p['index_pairs']} pairs, "
               f"{p['index_age_s']} s old") if p["index_version"] else "no index yet"
        stuck = p.get("rebuild_flag_stuck")
        if not p["stale"]:
            state = "up to date"
        elif stuck:
            state = "newer pairs waiting, and the queued rebuild will never run (below)"
        elif p["rebuild_queued"] or q["started"]:
            state = "newer pairs waiting for the rebuild that is queued or running"
        else:
            state = ("newer pairs waiting, but NO rebuild is queued: start a worker, or "
                     f"`xmodal project resync --name {name} --enqueue`")
        written = f" ({p['written_references']} written by annotators)" if p["written_references"] else ""
        print(f"  {name}: {p['pairs']} pairs{written}, {p['skips']} skips, {len(p['problems'])} problems; "
              f"{idx}; {state}")
        pending = p.get("items_pending") or {}
        if any(pending.values()):
            print(f"    items pending embedding: {pending.get('image', 0)} images, {pending.get('text', 0)} texts")
        li = p.get("last_items")
        if li:
            added = li.get("added") or {}
            print(f"    last items run: {li.get('status')}, +{added.get('image', 0)} images "
                  f"+{added.get('text', 0)} texts, {li.get('far', 0)} far, "
                  f"{len(li.get('new_medoids') or [])} new medoids"
                  + (f", searchable after {li['searchable_s']} s" if li.get("searchable_s") else "")
                  + (f": {li['error']}" if li.get("error") else ""))
        if stuck:
            why = {"lost": "says queued but is in no queue (Redis restarted while a worker took it)",
                   "died": "was started by a worker that is gone", "missing": "does not exist",
                   "ended": "ended before it read the pairs"}[stuck["state"]]
            print(f"    PROBLEM: the rebuild flag names job {stuck['job']} ({stuck['age_s']} s ago), which "
                  f"{why}: a running `xmodal worker` replaces it within seconds (recovery sweep); if "
                  f"this stays, start one, or run `xmodal project resync --name {name} --enqueue`")
        if p.get("ls_refused_url"):
            print(f"    WARNING: Label Studio at {p['ls_refused_url']} (named by /setup) is not a "
                  "configured host: the API key is not sent there (the push goes only to "
                  "LABEL_STUDIO_URL, XMODAL_LABEL_STUDIO_HOSTS or the project's --label-studio-url). "
                  "If it is yours, add it to one of them")
        for pr in p["problems"][:10]:
            given = f" (entered: {pr['given']!r})" if pr["given"] else ""
            print(f"    problem: annotation {pr['annotation']} of task {pr['task']}: {pr['message']}{given}")
        if len(p["problems"]) > 10:
            print(f"    ... {len(p['problems']) - 10} more (`xmodal status --json`)")
        last = p["last_rebuild"]
        if last:
            lat = last.get("label_to_prediction_s")
            print(f"    last rebuild: job {last.get('job_id')} {last.get('total_s')} s"
                  + (f", label->predictions {lat} s" if lat is not None else "")
                  + f", Label Studio: {last.get('ls', '-')}")
    if data["failures"]:
        print("recent failures:")
        for f in data["failures"]:
            print(f"  {f['job']} ({f['project']}, {f['ended_at']}): {f['error']}")
    return 0
