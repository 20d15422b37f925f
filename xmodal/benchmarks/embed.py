"""Distributed feature extraction benchmark: in-process vs 1, 2, … `xmodal worker` processes.

    python -m xmodal.benchmarks.embed --data ../shared/data/coco_mini --workers 1,2 --threads auto,1

EfficientNet-Lite0 (ONNX Runtime) on the real COCO-mini JPEGs (decoding included), through
:func:`workers.embed.embed_distributed`. Every run starts from a cold feature cache (a fresh
cache directory for the coordinator *and* the workers); the workers are started once per
configuration and warmed up (ONNX session built) before the timed runs, as long-lived workers
would be. ``--threads`` sets ONNX Runtime's intra-op threads per worker
(``$XMODAL_EMBED_THREADS``; ``auto`` = its default, one per core), so that N workers on few cores
can be measured with and without oversubscription. Prints medians over ``--runs`` and the load
average before and after (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path


def _images(data: Path, limit: int | None) -> list[str]:
    if (data / "pairs.json").is_file():
        pairs = json.loads((data / "pairs.json").read_text())
        paths = [str(data / p["file"]) for p in pairs]
    else:
        from xmodal.datasets.folder import image_files

        paths = image_files(data / "images" if (data / "images").is_dir() else data)
    return paths[:limit] if limit else paths


def _start_workers(pm, n: int, queue: str, env: dict, tag: str, pin: bool = False) -> None:
    """``n`` `xmodal worker --queue <queue>` processes under ``pm``, registered on return."""
    from xmodal.redis_conn import get_redis
    from xmodal.simulation.processes import python_cli, wait_worker

    children = []
    for k in range(n):
        # --pin: worker k on core k only (taskset execs the worker: same pid), like k one-core machines
        prefix = ["taskset", "-c", str(k % (os.cpu_count() or 1))] if pin else []
        children.append(pm.start(f"{tag}-w{k}", prefix + python_cli() + [
            "worker", "--queue", queue, "--name", f"{tag}-w{k}"], env=env))
    for child in children:
        wait_worker(pm, child, get_redis(), queue, timeout=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="COCO-mini folder or an image folder")
    ap.add_argument("--workers", default="1,2", help="worker counts to measure (default 1,2)")
    ap.add_argument("--threads", default="auto,1",
                    help="ONNX Runtime intra-op threads per worker: 'auto' and/or numbers")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per configuration (median)")
    ap.add_argument("--chunk-size", type=int, default=0,
                    help="images per job (default: each worker gets >= 4 chunks, at most 64)")
    ap.add_argument("--limit", type=int, default=None, help="first N images only")
    ap.add_argument("--no-inprocess", action="store_true", help="skip the in-process baseline")
    ap.add_argument("--pin", action="store_true",
                    help="pin worker k to core k (taskset): N workers = N one-core machines")
    ap.add_argument("--json", type=Path, help="write the numbers here too")
    args = ap.parse_args(argv)

    if not args.data.is_dir():
        print(f"--data {args.data}: no such folder (COCO-mini: ../shared/data/coco_mini)",
              file=sys.stderr)
        return 2
    paths = _images(args.data, args.limit)
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        print(f"{len(missing)} image files missing, e.g. {missing[0]}", file=sys.stderr)
        return 2
    counts = [int(x) for x in args.workers.split(",") if x.strip()]
    threads = [t.strip() for t in args.threads.split(",") if t.strip()]
    tmp = Path(tempfile.mkdtemp(prefix="xmodal-embed-bench-"))
    tag = f"eb-{uuid.uuid4().hex[:8]}"
    # a private namespace; an embedded Redis in the temp dir unless $REDIS_URL is set
    os.environ.setdefault("MODEL_DIR", str(tmp / "models"))
    os.environ["XMODAL_REDIS_PREFIX"] = tag
    os.environ["XMODAL_EMBED_QUEUE"] = f"{tag}-embed"
    os.environ["XMODAL_EMBED_RETRIES"] = "0"
    from xmodal.encoders import get_encoder
    from xmodal.encoders.cache import FeatureCache, embed_with_cache
    from xmodal.encoders.distributed import default_chunks, embed_distributed, embed_queue_name
    from xmodal.redis_conn import get_redis, redis_url
    from xmodal.simulation.processes import ProcessManager

    get_redis().ping()
    env = dict(os.environ, REDIS_URL=redis_url())
    queue = embed_queue_name()
    load0 = os.getloadavg()
    print(f"{len(paths)} images from {args.data}, {os.cpu_count()} cores, load average "
          f"{load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}; {args.runs} cold-cache runs each")
    results = []
    # configurations: (label, run(dir)); all workers run at once, each configuration on its own
    # queue, and the timed runs go round-robin over the configurations, so that a change in the
    # machine's load (shared) hits all of them alike
    configs: list[tuple[str, object]] = []
    pm = ProcessManager(tmp)
    try:
        if not args.no_inprocess:
            enc = get_encoder("image", "efficientnet-lite0", progress=False)
            embed_with_cache(enc, paths[:8], FeatureCache(tmp / "warm"), progress=False)
            configs.append(("in-process (ORT auto)", lambda d, enc=enc: embed_with_cache(
                enc, paths, FeatureCache(d), progress=False)))
        for th in threads:
            for n in counts:
                wenv = dict(env)
                if th != "auto":
                    wenv["XMODAL_EMBED_THREADS"] = th
                else:
                    wenv.pop("XMODAL_EMBED_THREADS", None)
                label = f"{n} worker{'s' if n > 1 else ''}, {th} thread{'s' if th != '1' else ''}"
                label += ", pinned" if args.pin else ""
                q = f"{queue}-{th}-{n}"
                _start_workers(pm, n, q, wenv, f"{tag}-{th}-{n}", pin=args.pin)
                size = args.chunk_size or default_chunks(len(paths), n, "image")
                enc = get_encoder("image", "efficientnet-lite0", progress=False)
                # warm-up: every worker builds its ONNX session on its first chunk
                embed_distributed(enc, paths[:8 * n], FeatureCache(tmp / f"warm-{th}-{n}"), queue=q,
                                  chunk_size=4, progress=False, worker_cache_root="")
                configs.append((label, lambda d, enc=enc, q=q, size=size: embed_distributed(
                    enc, paths, FeatureCache(d / "coordinator"), queue=q, chunk_size=size,
                    progress=False, worker_cache_root=str(d / "workers"))))
        times: dict[str, list[float]] = {label: [] for label, _ in configs}
        loads: list[float] = []
        for run in range(args.runs):
            for k, (label, fn) in enumerate(configs):
                t0 = time.perf_counter()
                fn(tmp / f"run{run}-cfg{k}")
                times[label].append(time.perf_counter() - t0)
            loads.append(os.getloadavg()[0])
            print(f"round {run + 1}/{args.runs}: " + ", ".join(
                f"{label} {t[-1]:.2f} s" for label, t in times.items()) + f"; load {loads[-1]:.2f}",
                flush=True)
    finally:
        pm.stop_all(grace=30)
    base = configs[0][0]
    print(f"\n{'configuration':<26} {'median s':>8} {'img/s':>7} {'speed-up':>9}  runs (s)")
    for label, t in times.items():
        med = statistics.median(t)
        # paired: each round's ratio to the first configuration of the same round
        ratio = statistics.median(b / x for b, x in zip(times[base], t))
        results.append({"config": label, "median_s": round(med, 3),
                        "images_per_s": round(len(paths) / med, 1),
                        "speedup_vs_first_paired_median": round(ratio, 2),
                        "runs_s": [round(x, 3) for x in t]})
        print(f"{label:<26} {med:8.2f} {len(paths) / med:7.1f} {ratio:8.2f}x  "
              + ", ".join(f"{x:.2f}" for x in t))
    print(f"(speed-up: median over rounds of {base} time / this time, same round)")
    by_label = {r["config"]: r for r in results}
    for th in threads:
        labels = [f"{n} worker{'s' if n > 1 else ''}, {th} thread{'s' if th != '1' else ''}"
                  + (", pinned" if args.pin else "") for n in counts]
        one = labels[0]
        for n, label in zip(counts[1:], labels[1:]):
            ratio = statistics.median(a / b for a, b in zip(times[one], times[label]))
            by_label[label][f"speedup_vs_{counts[0]}_workers_paired_median"] = round(ratio, 2)
            print(f"{counts[0]} -> {n} workers, {th} thread(s) each: x{ratio:.2f} "
                  "(paired median over rounds)")
    from xmodal.redis_conn import embedded_server, stop_embedded

    if embedded_server() is not None:
        stop_embedded()
    load1 = os.getloadavg()
    print(f"load average after: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"images": len(paths), "cores": os.cpu_count(),
                                         "load_before": load0, "load_after": load1, "load_per_round": loads,
                                         "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
