"""Search and rebuild at scale: ANN vs exact search, and full-rebuild time and memory vs n.

::

    python -m xmodal.benchmarks.scale ann --n 100000,1000000           # recall@10, latency, build
    python -m xmodal.benchmarks.scale rebuild --n 10000,100000,1000000  # build_snapshot + write, peak RSS

Both use *realistic* codes: SSR codes (Pearson, k=200 reference pairs) of synthetic clustered
features in which image i and text i are two noisy views of one latent point (100 clusters in a
64-d latent space, within-cluster spread 0.8, view noise 2.0; image features ReLU'd like pooled CNN
activations, text features unit-norm like sentence embeddings). Uniform noise would have no
neighbourhood structure at all, which is not what the product indexes: there ANN recall is
meaningless. At these settings the true partner of a text is the exact top-1 image in ~20 % of
queries at 50k items: a weak but real cross-modal signal, as after a few hundred labels.

``ann`` generates codes in chunks (features never held whole), then for each n: builds the ANN
index (:mod:`xmodal.index.ann`), runs 200 single text→image queries with the same ``IndexSnapshot``
code path /search uses (ANN shortlist + exact re-scoring, vs exact), and reports recall@10 of
the ANN top-10 against the exact top-10, recall@k at k=1000, and latency median / p95.

``rebuild`` writes a real workspace per n (features on disk, items.json, 200 pairs), then runs
``workers.rebuild.build_snapshot`` + ``write_snapshot`` in a *fresh subprocess* per n, so the peak
RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) is that rebuild's alone, and reports
seconds (load + SSR fit + codes, ANN build, write) and the files' sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

K_REFS = 200
CHUNK = 50_000


# -- realistic data ---------------------------------------------------------------------------
class PairedClusters:
    """Image i and text i are views of one latent point (chunk-wise, deterministic per chunk)."""

    def __init__(self, d_image: int = 1280, d_text: int = 384, clusters: int = 100,
                 latent: int = 64, spread: float = 0.8, noise: float = 2.0, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.centres = rng.normal(size=(clusters, latent))
        self.W_image = rng.normal(size=(latent, d_image)) / np.sqrt(latent)
        self.W_text = rng.normal(size=(latent, d_text)) / np.sqrt(latent)
        self.spread, self.noise, self.seed = spread, noise, seed

    def chunk(self, start: int, stop: int, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
        """Features of items ``start..stop`` (``start`` a multiple of CHUNK, or 0)."""
        rng = np.random.default_rng((self.seed, start))
        m = stop - start
        z = (self.centres[rng.integers(len(self.centres), size=m)]
             + self.spread * rng.normal(size=(m, self.centres.shape[1])))
        X = np.maximum(z @ self.W_image + self.noise * rng.normal(size=(m, self.W_image.shape[1])), 0.0)
        Y = z @ self.W_text + self.noise * rng.normal(size=(m, self.W_text.shape[1]))
        Y /= np.linalg.norm(Y, axis=1, keepdims=True)
        return X.astype(dtype), Y.astype(dtype)

    def features(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        parts = [self.chunk(s, min(s + CHUNK, n)) for s in range(0, n, CHUNK)]
        return np.vstack([p[0] for p in parts]), np.vstack([p[1] for p in parts])


def clustered_codes(n: int, k: int = K_REFS, d_image: int = 256, seed: int = 0,
                    measure: str = "pearson") -> tuple[np.ndarray, np.ndarray]:
    """SSR codes (image, text) of ``n`` paired clustered items with ``k`` reference pairs (the
    first k items, which are i.i.d.), computed chunk by chunk: equal to ``SSRIndex.fit`` codes."""
    from xmodal.core.ssr import ssr, ssr_codes

    gen = PairedClusters(d_image=d_image, seed=seed)
    ref_x, ref_y = gen.chunk(0, min(CHUNK, n))
    ref_x, ref_y = ref_x[:k], ref_y[:k]
    I = np.empty((n, k), np.float32)
    T = np.empty((n, k), np.float32)
    for s in range(0, n, CHUNK):
        X, Y = gen.chunk(s, min(s + CHUNK, n))
        I[s:s + len(X)] = ssr_codes(ssr(X, ref_x), measure)
        T[s:s + len(Y)] = ssr_codes(ssr(Y, ref_y), measure)
    return I, T


def _snapshot(I: np.ndarray, T: np.ndarray, csls_k: int | None = None):
    from xmodal.index.snapshot import IndexSnapshot

    n, m, k = len(I), len(T), I.shape[1]
    hubs = {}
    if csls_k:
        from xmodal.core.hubness import hubness_terms

        hubs["image_hub"], hubs["text_hub"] = hubness_terms(I, T, csls_k)
    return IndexSnapshot(
        project="bench", version=1, measure="pearson",
        image_ids=np.arange(n).astype(str), text_ids=np.arange(m).astype(str),
        image_codes=I, text_codes=T, image_refs=np.zeros((k, 1), np.float32),
        text_refs=np.zeros((k, 1), np.float32), pair_rows=np.zeros((k, 2), np.int64),
        annotation_ids=np.arange(k), medoid_ids=np.zeros(0, str), csls_k=csls_k, **hubs)


def _ms(times: list[float]) -> tuple[float, float]:
    a = np.asarray(times) * 1000
    return float(np.median(a)), float(np.percentile(a, 95))


def load_note() -> str:
    try:
        return "load average " + " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "load average unknown"


# -- ann ------------------------------------------------------------------------------------
def bench_ann(n: int, queries: int = 200, k: int = 10, big_k: int = 1000, seed: int = 0,
              csls_k: int | None = None) -> dict:
    """ANN (shortlist + exact re-scoring, the /search path) vs exact search, text→image."""
    from xmodal.index.ann import AnnIndex

    t0 = time.perf_counter()
    I, T = clustered_codes(n, seed=seed)
    codes_s = time.perf_counter() - t0
    snap = _snapshot(I, T, csls_k)
    q_rows = np.random.default_rng(seed + 99).choice(n, queries, replace=False)
    Q = T[q_rows]
    t0 = time.perf_counter()
    ann = AnnIndex.build(I)
    build_s = time.perf_counter() - t0

    def run(kk):
        lat, out = [], []
        for i in range(queries):
            t = time.perf_counter()
            out.append([x for x, _ in snap.search("text", Q[i:i + 1], kk)[0]])
            lat.append(time.perf_counter() - t)
        return out, lat

    snap.ann["image"] = None                # exact
    exact, lat_exact = run(k)
    exact_big, _ = run(big_k) if big_k else (None, None)
    snap.ann["image"] = ann                 # approximate
    approx, lat_ann = run(k)
    approx_big, lat_big = run(big_k) if big_k else (None, None)

    def recall(a, e):
        return float(np.mean([len(set(x) & set(y)) / len(y) for x, y in zip(a, e)]))

    med_e, p95_e = _ms(lat_exact)
    med_a, p95_a = _ms(lat_ann)
    out = {"n": n, "k_refs": I.shape[1], "queries": queries, "nlist": ann.nlist,
           "nprobe_k10": ann.nprobe_for(64), "codes_s": round(codes_s, 2), "ann_build_s": round(build_s, 2),
           "ann_bytes": ann.nbytes(), "codes_bytes": int(I.nbytes), f"recall@{k}": round(recall(approx, exact), 4),
           "exact_ms_median": round(med_e, 3), "exact_ms_p95": round(p95_e, 3),
           "ann_ms_median": round(med_a, 3), "ann_ms_p95": round(p95_a, 3), "csls_k": csls_k,
           "load": load_note()}
    if big_k:
        out[f"recall@{big_k}"] = round(recall(approx_big, exact_big), 4)
        out[f"ann_ms_median_k{big_k}"], out[f"ann_ms_p95_k{big_k}"] = (round(x, 3) for x in _ms(lat_big))
    return out


# -- rebuild --------------------------------------------------------------------------------
def prepare_workspace(root: Path, n: int, d_image: int, d_text: int = 384, k: int = K_REFS,
                      seed: int = 0, bridge: bool = False) -> list[dict]:
    """A workspace at ``root`` with n images and n texts (features written chunk-wise to .npy, so
    generating never holds them whole) and the k reference pairs a rebuild would read. With
    ``bridge``, a class bridge too (each image's bridge row: its text's features plus as much
    noise, a bridge that knows something), so the rebuild fuses it and the codes are
    k + d_text wide, as a COCO-like project's."""
    from xmodal.project.workspace import Workspace

    ws = Workspace(root)
    ws.save_config({"select": "image", "encoders": {"image": "synthetic", "text": "synthetic"},
                    "enhance": ["zscore", "csls", "bridge"] if bridge else ["zscore", "csls"]})
    image_ids = [f"img/{i:07d}.jpg" for i in range(n)]
    text_ids = [f"t{i:07d}" for i in range(n)]
    ws.save_items(image_ids, [f"/data/{x}" for x in image_ids], text_ids,
                  [f"caption of item {i}" for i in range(n)])
    gen = PairedClusters(d_image=d_image, d_text=d_text, seed=seed)
    paths = {m: ws.features_path(m) for m in ("image", "text")}
    paths["image"].parent.mkdir(parents=True, exist_ok=True)
    mm = {"image": np.lib.format.open_memmap(paths["image"], "w+", np.float32, (n, d_image)),
          "text": np.lib.format.open_memmap(paths["text"], "w+", np.float32, (n, d_text))}
    for s in range(0, n, CHUNK):
        X, Y = gen.chunk(s, min(s + CHUNK, n))
        mm["image"][s:s + len(X)], mm["text"][s:s + len(Y)] = X, Y
    for m, d in (("image", d_image), ("text", d_text)):
        mm[m].flush()
        paths[m].with_suffix(".json").write_text(json.dumps(
            {"encoder_id": f"synthetic-{m}", "shape": [n, d]}))
    if bridge:
        rng = np.random.default_rng(seed + 2)
        B = np.empty((n, d_text), np.float32)
        for s in range(0, n, CHUNK):
            T = np.asarray(mm["text"][s:s + CHUNK])
            B[s:s + len(T)] = (T + rng.normal(0, 1, T.shape).astype(np.float32)
                               * np.linalg.norm(T, axis=1, keepdims=True) / np.sqrt(d_text))
        ws.save_bridge(B, np.zeros(0, np.int64), np.zeros((0, d_text), np.float32))
        del B
    del mm
    refs = np.random.default_rng(seed + 1).choice(n, k, replace=False)
    ws.save_selection([image_ids[i] for i in refs], modality="image")
    return [{"annotation_id": j + 1, "image_id": image_ids[i], "text_id": text_ids[i],
             "received_at": 0.0} for j, i in enumerate(refs.tolist())]


def measure_rebuild(root: Path, pairs: list[dict]) -> dict:
    """One full rebuild (``build_snapshot`` + ``write_snapshot``) in this process."""
    from xmodal.index.build import build_snapshot
    from xmodal.index.files import write_snapshot
    from xmodal.project.workspace import Workspace

    ws = Workspace(root)
    t0 = time.perf_counter()
    snap, skipped = build_snapshot(ws, 1, pairs)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    path = write_snapshot(ws, snap)
    write_s = time.perf_counter() - t0
    files = sorted(p for p in path.parent.iterdir() if p.name.startswith("v1."))
    ann_s = float(snap.meta.get("ann_s") or 0.0)
    return {"build_s": round(build_s, 2), "ssr_s": round(build_s - ann_s, 2), "ann_s": round(ann_s, 2),
            "write_s": round(write_s, 2), "total_s": round(build_s + write_s, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "ann": sorted(m for m, a in snap.ann.items() if a is not None), "skipped": len(skipped),
            "files": {p.name: p.stat().st_size for p in files}}


def bench_rebuild(n: int, d_image: int, workdir: Path, keep: bool = False, bridge: bool = False) -> dict:
    root = workdir / f"ws_{n}_{d_image}{'_bridge' if bridge else ''}"
    if root.exists():
        shutil.rmtree(root)
    t0 = time.perf_counter()
    prep = subprocess.run([sys.executable, "-m", "xmodal.benchmarks.scale", "_prepare", str(root),
                           "--n", str(n), "--image-dim", str(d_image)] + (["--bridge"] if bridge else []),
                          capture_output=True, text=True, check=False)
    if prep.returncode != 0:
        raise RuntimeError(f"preparing n={n} failed:\n{prep.stderr[-3000:]}")
    prepare_s = time.perf_counter() - t0
    feats = sum(p.stat().st_size for p in (root / "features").glob("*.npy"))
    run = subprocess.run([sys.executable, "-m", "xmodal.benchmarks.scale", "_measure", str(root)],
                         capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise RuntimeError(f"rebuild n={n} failed (rc {run.returncode}):\n{run.stderr[-3000:]}")
    out = json.loads(run.stdout.strip().splitlines()[-1])
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    return {"n": n, "d_image": d_image, "d_text": 384, "k_refs": K_REFS, "bridge": bridge,
            "features_mb": round(feats / 2**20, 1),
            "prepare_s": round(prepare_s, 1), **out, "load": load_note()}


# -- output ---------------------------------------------------------------------------------
def ann_table(rows: list[dict]) -> str:
    lines = ["| n | ANN build | ANN memory (codes) | recall@10 | recall@1000 | exact median / p95 | "
             "ANN median / p95 (k=10) | ANN median / p95 (k=1000) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['n']:,} | {r['ann_build_s']:.1f} s (nlist {r['nlist']}) | "
            f"{r['ann_bytes'] / 2**20:.0f} MiB ({r['codes_bytes'] / 2**20:.0f} MiB) | {r['recall@10']:.3f} | "
            f"{r.get('recall@1000', float('nan')):.3f} | {r['exact_ms_median']:.2f} / {r['exact_ms_p95']:.2f} ms | "
            f"{r['ann_ms_median']:.2f} / {r['ann_ms_p95']:.2f} ms | "
            f"{r.get('ann_ms_median_k1000', float('nan')):.2f} / {r.get('ann_ms_p95_k1000', float('nan')):.2f} ms |")
    return "\n".join(lines)


def rebuild_table(rows: list[dict]) -> str:
    lines = ["| n (images = texts) | features (image-d / text-d, on disk) | rebuild: SSR fit + codes | "
             "ANN build | write | total | peak RSS | index files |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        files = r["files"]
        npz = sum(v for k, v in files.items() if k.endswith(".npz"))
        ann = sum(v for k, v in files.items() if k.endswith(".faiss"))
        size = f"{npz / 2**20:.0f} MiB" + (f" + {ann / 2**20:.0f} MiB ANN" if ann else "")
        lines.append(f"| {r['n']:,}{' (+ bridge)' if r.get('bridge') else ''} | {r['d_image']} / {r['d_text']} "
                     f"({r['features_mb'] / 1024:.2f} GiB) | "
                     f"{r['ssr_s']:.1f} s | {r['ann_s']:.1f} s | {r['write_s']:.1f} s | {r['total_s']:.1f} s | "
                     f"{r['peak_rss_mb'] / 1024:.2f} GiB | {size} |")
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",") if x.strip()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m xmodal.benchmarks.scale", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("ann", help="ANN vs exact search: recall@10, latency, build time, memory")
    a.add_argument("--n", default="100000,1000000")
    a.add_argument("--queries", type=int, default=200)
    a.add_argument("--csls", type=int, default=0, help="also CSLS with this k (n x n terms: slow above 100k)")
    a.add_argument("--json")
    b = sub.add_parser("rebuild", help="full rebuild time and peak RSS vs n, one subprocess per n")
    b.add_argument("--n", default="10000,100000,1000000")
    b.add_argument("--image-dim", default="auto",
                   help="image feature dimension: an int, or 'auto' = 1280 up to 100k items, 256 above "
                        "(1M x 1280 float32 features alone are 4.8 GiB, x2 while SSR normalises them)")
    b.add_argument("--workdir", help="where the workspaces go (default a temporary folder)")
    b.add_argument("--threshold", type=int, default=None,
                   help="XMODAL_ANN_THRESHOLD for the rebuilds (default: the product default)")
    b.add_argument("--bridge", action="store_true",
                   help="with a class bridge fused into the codes (k + 384 wide), as a COCO-like project")
    b.add_argument("--json")
    p = sub.add_parser("_prepare")
    p.add_argument("root")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--image-dim", type=int, required=True)
    p.add_argument("--bridge", action="store_true")
    m = sub.add_parser("_measure")
    m.add_argument("root")
    args = ap.parse_args(argv)

    if args.cmd == "_prepare":
        pairs = prepare_workspace(Path(args.root), args.n, args.image_dim, bridge=args.bridge)
        (Path(args.root) / "bench_pairs.json").write_text(json.dumps(pairs))
        return 0
    if args.cmd == "_measure":
        pairs = json.loads((Path(args.root) / "bench_pairs.json").read_text())
        print(json.dumps(measure_rebuild(Path(args.root), pairs)))
        return 0
    print(f"# {load_note()}, {os.cpu_count()} CPU(s)", flush=True)
    rows = []
    if args.cmd == "ann":
        for n in _ints(args.n):
            rows.append(bench_ann(n, args.queries, csls_k=args.csls or None))
            print(json.dumps(rows[-1]), flush=True)
        print(ann_table(rows))
    else:
        if args.threshold is not None:
            os.environ["XMODAL_ANN_THRESHOLD"] = str(args.threshold)
        work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="xmodal-scale-"))
        work.mkdir(parents=True, exist_ok=True)
        try:
            for n in _ints(args.n):
                d = (1280 if n <= 100_000 else 256) if args.image_dim == "auto" else int(args.image_dim)
                rows.append(bench_rebuild(n, d, work, bridge=args.bridge))
                print(json.dumps(rows[-1]), flush=True)
        finally:
            if not args.workdir:
                shutil.rmtree(work, ignore_errors=True)
        print(rebuild_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print(f"# {load_note()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
