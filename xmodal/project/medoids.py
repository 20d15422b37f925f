"""The project's medoids (k-medoids on the select modality, of its z-scored features where the
project's ``enhance`` has "zscore-medoids", anytime order, extended without discarding any) and the
cold-start candidate pool (k-medoids of the other modality).
"""

from __future__ import annotations

import contextlib
import json

import numpy as np

from xmodal.errors import ConfigError
from xmodal.logfmt import Say, quiet

CANDIDATES_FILE = "candidates.json"


# -- selection --------------------------------------------------------------------------------

def check_k(k, n: int) -> int | str:
    """``k`` as an int checked against the ``n`` items to choose from, or ``"auto"``; ConfigError
    otherwise (``project create`` checks it before embedding anything)."""
    if isinstance(k, str):
        if k.strip().lower() == "auto":
            return "auto"
        try:
            k = int(k)
        except ValueError:
            raise ConfigError(f"--k must be a number or 'auto', not {k!r}") from None
    k = int(k)
    if k < 1:
        raise ConfigError(f"--k must be at least 1 (got {k}); the Pearson similarity needs 2 pairs")
    if k > n:
        raise ConfigError(f"--k {k} is more than the {n} items to choose medoids from")
    return k


def resolve_k(k, F: np.ndarray, seed: int = 0) -> int:
    """An int k (checked against the pool) or ``"auto"`` (canopy method, at least 2)."""
    k = check_k(k, len(F))
    if k == "auto":
        from xmodal.core.medoids import canopy_k

        return int(min(max(canopy_k(F, random_state=seed), 2), len(F)))
    return k


def _selector(k: int, seed: int, standardize: bool = False):
    from xmodal.core.medoids import KMedoidsSelector

    return KMedoidsSelector(k, random_state=seed, standardize=standardize)


def zscore_medoids(ws) -> bool:
    """Whether the project's medoids come from its z-scored features ("zscore-medoids" in its
    ``enhance``; a workspace written before that default keeps the paper's raw features)."""
    from xmodal.project.workspace import parse_enhance

    return "zscore-medoids" in parse_enhance(ws.config.get("enhance"))


def ensure_selection(ws, F: np.ndarray, select: str, k: int, seed: int = 0,
                     say: Say = quiet) -> tuple[list[str], int]:
    """Medoids of ``select`` in anytime order, keeping any existing ones. Returns (ids, added)."""
    ids = ws.ids(select)
    sel = ws.selection
    if sel and sel.get("modality") == select and sel.get("medoid_ids"):
        current = list(sel["medoid_ids"])
        rows = ws.row_of(select)
        if all(m in rows for m in current):
            if k <= len(current):
                if k < len(current):
                    say(f"note: the project already has {len(current)} medoids; a smaller k ({k}) "
                        "discards none (their pairs may be annotated)")
                return current, 0
            return extend_selection(ws, F, select, k - len(current), seed), k - len(current)
    selector = _selector(k, seed, zscore_medoids(ws)).fit(F)
    medoids = [ids[r] for r in selector.medoid_indices_]
    ws.save_selection(medoids, selector.labels_, modality=select)
    return medoids, len(medoids)


def extend_selection(ws, F: np.ndarray, select: str, n_new: int, seed: int = 0) -> list[str]:
    """Append ``n_new`` medoids (greedy coverage, ``KMedoidsSelector.extend``); old ones stay first."""
    ids = ws.ids(select)
    rows = ws.row_of(select)
    current = ws.medoid_ids()
    free = len(ids) - len(current)
    if n_new > free:
        raise ConfigError(f"cannot add {n_new} medoids: only {free} {select}s are not medoids yet")
    selector = _selector(max(len(current), 1), seed, zscore_medoids(ws))
    selector.medoid_indices_ = np.asarray([rows[m] for m in current], dtype=np.int64)
    selector.extend(F, n_new)
    medoids = [ids[r] for r in selector.medoid_indices_]
    assert medoids[:len(current)] == current
    ws.save_selection(medoids, selector.labels_, modality=select)
    return medoids


def ensure_candidate_pool(ws, F_other: np.ndarray, other: str, n: int, seed: int = 0) -> list[str]:
    """The cold-start options: ``n`` k-medoids of the other modality (kept in candidates.json)."""
    from xmodal.project.workspace import atomic_write_json

    path = ws.root / CANDIDATES_FILE
    with contextlib.suppress(OSError, ValueError):
        saved = json.loads(path.read_text())
        if saved.get("modality") == other and len(saved.get("pool", [])) == min(n, len(F_other)) \
                and all(c in ws.row_of(other) for c in saved["pool"]):
            return list(saved["pool"])
    ids = ws.ids(other)
    n = min(n, len(ids))
    if n <= 0:
        return []
    pool = [ids[r] for r in _selector(n, seed).fit(F_other).medoid_indices_]
    atomic_write_json(path, {"modality": other, "pool": pool,
                             "why": "no cross-modal signal before 2 pairs: a diverse sample "
                                    "(k-medoids of this modality) is offered to every task"})
    return pool


def candidate_pool(ws) -> list[str]:
    """The saved cold-start pool (``[]`` when the project has none yet)."""
    with contextlib.suppress(OSError, ValueError):
        return list(json.loads((ws.root / CANDIDATES_FILE).read_text()).get("pool") or [])
    return []


_bridges: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def bridge_order(ws, item_id: str) -> list[str] | None:
    """The other modality's ids by the class bridge's label-free similarity to ``item_id`` (an
    item of the select modality), best first; None where the project has no bridge (not in its
    ``enhance``, or its image encoder has no classifier). What a page offers after the diverse
    pool before the index can rank, instead of the file order: among 5,793 texts, the first
    task's right caption was not in the 1000 a page carries."""
    from xmodal.core.bridge import centred

    if "bridge" not in (ws.config.get("enhance") or []):
        return None
    try:
        key = (str(ws.root), ws.bridge_path.stat().st_mtime_ns, ws.features_path("text").stat().st_mtime_ns)
    except OSError:
        return None
    if key not in _bridges:
        saved = ws.bridge()
        if saved is None:
            return None
        _bridges.clear()   # one workspace at a time is the common case; keep memory flat
        _bridges[key] = (centred(saved["image"])[0], centred(ws.load_features("text"))[0])
    images, texts = _bridges[key]
    query, targets, other = (images, texts, "text") if ws.select == "image" else (texts, images, "image")
    row = ws.row_of(ws.select).get(str(item_id))
    if row is None:
        return None
    ids = ws.ids(other)
    return [ids[i] for i in np.argsort(-(targets @ query[row]), kind="stable")]
