"""An index version as a file: ``index/v<N>.npz``, written whole (temporary file + rename) and
validated when read (whole zip, every array, consistent shapes, finite values: a valid ``.npz`` of
NaNs made /search answer ``"score": NaN``, which is not JSON). An ANN index of a large modality is
written beside it as ``index/v<N>.<modality>.faiss`` before the ``.npz`` that names it. Files
written before the enhancement fields existed load as faithful indexes.
"""


from __future__ import annotations

import io
import json
import logging
import os
import re
from pathlib import Path

import numpy as np

from xmodal.errors import DataError
from xmodal.index import ann as ann_mod
from xmodal.index.snapshot import IndexSnapshot
from xmodal.project.workspace import Workspace, atomic_write_bytes

log = logging.getLogger(__name__)

_FILE_RE = re.compile(r"^v(\d+)\.npz$")


def index_path(ws: Workspace, version: int) -> Path:
    return ws.index_dir / f"v{int(version)}.npz"


def versions_on_disk(ws: Workspace) -> list[int]:
    if not ws.index_dir.is_dir():
        return []
    out = []
    for p in ws.index_dir.iterdir():
        m = _FILE_RE.match(p.name)
        if m:
            out.append(int(m.group(1)))
    return sorted(out)


def write_snapshot(ws: Workspace, snap: IndexSnapshot) -> Path:
    """Serialize the whole index to ``index/v<N>.npz`` atomically, after the ANN files of
    ``snap.ann`` (``index/v<N>.<modality>.faiss``, each atomic too), which its meta then names."""
    path = index_path(ws, snap.version)
    built = {m: a for m, a in snap.ann.items() if a is not None}
    for modality, index in built.items():
        index.save(ann_mod.path_for(path, modality))
    meta = dict(snap.meta, project=snap.project, version=snap.version, measure=snap.measure,
                select=snap.select, sparse_top_k=snap.sparse_top_k, sparse_power=snap.sparse_power,
                csls_k=snap.csls_k, ann=sorted(built), bridge_weight=snap.bridge_weight,
                map_weight=snap.map_weight)
    optional = {name: np.asarray(getattr(snap, name), dtype=np.float32) for name in _OPTIONAL
                if getattr(snap, name) is not None}
    buf = io.BytesIO()
    np.savez(buf, **optional, image_ids=np.asarray(snap.image_ids, dtype=str),
             text_ids=np.asarray(snap.text_ids, dtype=str),
             image_codes=snap.image_codes.astype(np.float32), text_codes=snap.text_codes.astype(np.float32),
             image_refs=snap.image_refs.astype(np.float32), text_refs=snap.text_refs.astype(np.float32),
             pair_rows=np.asarray(snap.pair_rows, dtype=np.int64).reshape(-1, 2),
             annotation_ids=np.asarray(snap.annotation_ids, dtype=np.int64),
             medoid_ids=np.asarray(snap.medoid_ids, dtype=str),
             meta=np.asarray(json.dumps(meta)))
    atomic_write_bytes(path, buf.getvalue())
    snap.path = path
    return path


_OPTIONAL = ("image_col_stats", "text_col_stats", "image_hub", "text_hub", "bridge_means",
             "bridge_classes", "bridge_class_emb", "bridge_basis", "map_image_mean", "map_text_mean",
             "map_matrix", "map_text_matrix")


class CorruptIndex(DataError):
    """An index file that cannot be read whole or does not hold a consistent index."""


def read_snapshot(path: Path, project: str | None = None) -> IndexSnapshot:
    """Read and validate an index file: FileNotFoundError if it is missing, :class:`CorruptIndex`
    for anything unreadable (a truncated zip, a missing array, inconsistent shapes)."""
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:
            file_id = _file_id(os.fstat(fh.fileno()))
            meta = json.loads(str(z["meta"]))
            optional = {name: z[name] for name in _OPTIONAL if name in z.files}
            snap = IndexSnapshot(
                project=project or meta.get("project", ""), version=int(meta["version"]),
                measure=meta["measure"], select=meta.get("select", "image"),
                sparse_top_k=meta.get("sparse_top_k"), sparse_power=float(meta.get("sparse_power") or 1.0),
                image_ids=z["image_ids"], text_ids=z["text_ids"],
                image_codes=z["image_codes"], text_codes=z["text_codes"],
                image_refs=z["image_refs"], text_refs=z["text_refs"],
                pair_rows=z["pair_rows"], annotation_ids=z["annotation_ids"],
                medoid_ids=z["medoid_ids"], meta=meta, csls_k=meta.get("csls_k"), path=Path(path),
                file_id=file_id, bridge_weight=float(meta.get("bridge_weight") or 0.0),
                map_weight=float(meta.get("map_weight") or 0.0), **optional)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - BadZipFile, zlib.error, KeyError, ValueError, EOFError...
        raise CorruptIndex(f"index file {Path(path).name} is unreadable: {type(exc).__name__}") from exc
    problem = _inconsistency(snap, Path(path))
    if problem:
        raise CorruptIndex(f"index file {Path(path).name} is inconsistent: {problem}")
    return snap


def _inconsistency(snap: IndexSnapshot, path: Path) -> str | None:
    """What makes a loaded index unusable (shapes only: cheap at any size), or None."""
    m = _FILE_RE.match(path.name)
    if m and int(m.group(1)) != snap.version:
        return f"it says version {snap.version}"
    k = len(snap.pair_rows)
    checks = [
        (snap.image_codes.ndim == 2 and snap.image_codes.shape[0] == len(snap.image_ids), "image codes"),
        (snap.text_codes.ndim == 2 and snap.text_codes.shape[0] == len(snap.text_ids), "text codes"),
        (snap.image_codes.shape[1:] == snap.text_codes.shape[1:], "code widths"),
        (snap.pair_rows.ndim == 2 and snap.pair_rows.shape[1] == 2, "pair rows"),
        (len(snap.annotation_ids) == k, "annotation ids"),
        (len(snap.image_refs) == k and len(snap.text_refs) == k, "reference features"),
    ]
    bad = [what for ok, what in checks if not ok]
    if bad:
        return ", ".join(bad) + " do not match"
    # a float64 sum per array: NaN or infinity anywhere makes it non-finite, without an n x d mask
    floats = {"image codes": snap.image_codes, "text codes": snap.text_codes,
              "image references": snap.image_refs, "text references": snap.text_refs,
              **{name.replace("_", " "): getattr(snap, name) for name in _OPTIONAL}}
    broken = [what for what, a in floats.items()
              if a is not None and np.size(a) and not np.isfinite(np.sum(a, dtype=np.float64))]
    return ", ".join(broken) + " hold non-finite values (NaN or infinity)" if broken else None


def _file_id(st: os.stat_result) -> tuple:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def same_file(snap: IndexSnapshot) -> bool:
    """Whether the file ``snap`` was read from is still there, unchanged."""
    try:
        return snap.path is not None and _file_id(os.stat(snap.path)) == snap.file_id
    except OSError:
        return False
