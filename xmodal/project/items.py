"""Items added to, and removed from, a live project's workspace: the one path behind
``xmodal items add``, ``POST /items`` and Label Studio's ``TASKS_CREATED`` (:mod:`workers.growth`
drives it; this module touches the disk only).

Adding (:func:`add_items`): images (id -> path) and texts (id -> text).

- only what is new is added: an id the project has with the same content (the same text; an
  image at the same real path or with the same bytes) is nothing to do; an id it has with *other*
  content is an :class:`ItemConflict` naming them, and nothing is written (an id is an item's
  identity: its pairs and tasks name it, so it is never silently re-pointed; remove it first);
- new items are embedded with the project's own encoders (the fitted SIF state for SIF texts),
  through the feature cache, on the ``xmodal worker`` processes when ``workers_embed`` (chunked
  jobs, :func:`xmodal.encoders.distributed.embed_distributed`) else in this process. An item that
  cannot be embedded (a broken image) is not added and is reported in ``failed``;
- then, under the workspace's item lock (:meth:`Workspace.items_lock`), items.json, both feature
  matrices (appended rows: every existing row keeps its number), the image words and class
  bridge (recomputed from the features) and the selection's cluster labels (new items only: the
  nearest medoid) are written, each atomically. The rebuild reads items and features under the
  same lock, so it never sees one without the other;
- new items of the select modality that fall *far* from every medoid are listed, with how many
  new medoids would cover them (:func:`far_items`); the caller proposes them as tasks.

Codes: an item's code is its similarity to the references, standardised over every item (the
"zscore" columns) and corrected for hubness over every item (CSLS); both change with the item set,
so new codes cannot be appended to a published index without changing what the old rows would
be. The caller runs a rebuild instead (measured: docs/operations.md, "Adding items").

Removing (:func:`remove_items`): rows dropped under the same lock; a removed medoid leaves the
selection. Pairs naming a removed item stay in the pair store; :mod:`workers.growth` turns them
into problems the team sees.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np

from xmodal import settings
from xmodal.errors import DataError
from xmodal.logfmt import Say, quiet
from xmodal.project.workspace import MODALITIES, Workspace

log = logging.getLogger(__name__)

MAX_ID_CHARS = 512
MAX_TEXT_CHARS = 100_000


class ItemConflict(DataError):
    """An id the project has, given with other content (see the module doc)."""


@dataclass
class ItemsChange:
    """What :func:`add_items` / :func:`remove_items` did."""

    added: dict[str, list[str]] = field(default_factory=lambda: {"image": [], "text": []})
    unchanged: dict[str, int] = field(default_factory=lambda: {"image": 0, "text": 0})
    removed: dict[str, list[str]] = field(default_factory=lambda: {"image": [], "text": []})
    failed: list[tuple[str, str]] = field(default_factory=list)   # (id, why): not added
    far: list[str] = field(default_factory=list)          # new select-modality items far from every medoid
    far_threshold: float | None = None                    # the distance beyond which an item is far
    propose_medoids: int = 0                              # new medoids that would cover ``far``
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return any(self.added.values()) or any(self.removed.values())

    def summary(self) -> dict:
        return {"added": {m: len(v) for m, v in self.added.items()}, "unchanged": dict(self.unchanged),
                "removed": {m: len(v) for m, v in self.removed.items()},
                "failed": [{"id": i, "error": why} for i, why in self.failed[:20]],
                "far": len(self.far), "far_threshold": self.far_threshold,
                "propose_medoids": self.propose_medoids, "seconds": dict(self.seconds)}


# -- what is new ---------------------------------------------------------------------------------

def check_items(modality: str, items) -> dict[str, str]:
    """``{id: content}`` checked for shape (ids and contents non-empty strings within bounds);
    a :class:`DataError` naming the first bad entries otherwise."""
    if modality not in MODALITIES:
        raise DataError(f"unknown modality {modality!r}")
    if not isinstance(items, dict):
        raise DataError(f"{modality}s must be an object of id -> {'path' if modality == 'image' else 'text'}")
    bad = []
    limit = 4096 if modality == "image" else MAX_TEXT_CHARS
    for item_id, content in items.items():
        if not isinstance(item_id, str) or not item_id.strip() or len(item_id) > MAX_ID_CHARS \
                or "\x00" in item_id or item_id != item_id.strip():
            bad.append(f"id {str(item_id)[:60]!r}: an id is a non-empty string of at most "
                       f"{MAX_ID_CHARS} characters, no NUL, no surrounding spaces")
        elif not isinstance(content, str) or not content.strip():
            bad.append(f"{item_id[:60]!r}: the {'path' if modality == 'image' else 'text'} must be "
                       "a non-empty string")
        elif len(content) > limit or "\x00" in content:
            bad.append(f"{item_id[:60]!r}: longer than {limit} characters or holds a NUL")
    if bad:
        raise DataError(f"{len(bad)} bad {modality} item(s): {'; '.join(bad[:5])}"
                        f"{' …' if len(bad) > 5 else ''}")
    return dict(items)


def _same_image(old_path: str, new_path: str) -> bool:
    from xmodal.encoders.cache import content_key

    if os.path.realpath(old_path) == os.path.realpath(new_path):
        return True
    a, b = content_key(old_path, "image"), content_key(new_path, "image")
    return a is not None and a == b


def new_items(ws: Workspace, images: dict[str, str], texts: dict[str, str]):
    """``(new images, new texts, unchanged counts)``: what :func:`add_items` would add. Raises
    :class:`ItemConflict` when a known id comes with other content, :class:`DataError` when a new
    image is no readable file."""
    out, unchanged, conflicts = {}, {}, []
    for modality, given in (("image", images), ("text", texts)):
        given = check_items(modality, given or {})
        rows, contents = ws.row_of(modality), ws.contents(modality)
        fresh, same = {}, 0
        for item_id, content in given.items():
            row = rows.get(item_id)
            if row is None:
                fresh[item_id] = content
            elif contents[row] == content or (modality == "image" and _same_image(contents[row], content)):
                same += 1
            else:
                conflicts.append(f"{modality} {item_id!r}")
        out[modality], unchanged[modality] = fresh, same
    if conflicts:
        raise ItemConflict(f"{len(conflicts)} id(s) the project already has, with other content: "
                           f"{', '.join(conflicts[:5])}{' …' if len(conflicts) > 5 else ''}; nothing "
                           "was added (an id names one item for good: its pairs and tasks name it; "
                           "give the new content a new id, or remove the old item first)")
    missing = [i for i, p in out["image"].items() if not os.path.isfile(p) or not os.access(p, os.R_OK)]
    if missing:
        raise DataError(f"{len(missing)} new image(s) are no readable file, e.g. "
                        f"{', '.join(repr(out['image'][i]) for i in missing[:3])}; nothing was added")
    return out["image"], out["text"], unchanged


# -- embedding -----------------------------------------------------------------------------------

def _encoder(ws: Workspace, modality: str):
    name = ws.config["encoders"].get(modality)
    if modality == "text":
        from xmodal.project.text_encoder import workspace_text_encoder

        return workspace_text_encoder(ws)   # SIF with the corpus' fitted state, else the pretrained one
    if not name:
        raise DataError(f"workspace {ws.name!r} names no {modality} encoder")
    from xmodal.encoders import get_encoder

    return get_encoder(modality, name, progress=False)


def _embed(ws: Workspace, modality: str, contents: list[str], feature_cache, workers_embed: bool,
           say: Say, progress: bool = False) -> tuple[np.ndarray, dict[int, str]]:
    """(rows, {position: why} of the items that could not be embedded)."""
    from xmodal.encoders.cache import FeatureCache, embed_with_cache

    enc = _encoder(ws, modality)
    cache = FeatureCache(feature_cache)
    t0 = time.perf_counter()
    if workers_embed:
        from xmodal.encoders.distributed import embed_distributed

        F, failures = embed_distributed(enc, contents, cache, progress=progress, say=say)
    else:
        F, failures = embed_with_cache(enc, contents, cache, progress=progress)
    F = np.asarray(F, dtype=np.float32)
    where = {c: i for i, c in enumerate(contents)}
    failed = {where[item]: why for item, why in failures if item in where}
    failed.update({i: "not a finite vector" for i in np.flatnonzero(~np.isfinite(F).all(axis=1))
                   if i not in failed})
    want = ws.features_info(modality).get("encoder_id")
    same = getattr(enc, "compatible_with", lambda e: e == enc.encoder_id)
    if want and not same(want):
        raise DataError(f"the {modality} encoder here ({enc.encoder_id}) is not the one the project's "
                        f"features were made with ({want}): install the same versions and weights")
    say(f"embedded {len(contents)} new {modality}s ({time.perf_counter() - t0:.1f} s"
        f"{', on the workers' if workers_embed else ''})")
    return F, failed


# -- far from every medoid -----------------------------------------------------------------------

def far_percentile() -> float:
    return float(settings.get("XMODAL_NEW_MEDOID_PERCENTILE"))


def far_items(ws: Workspace, F: np.ndarray, n_before: int, percentile: float | None = None):
    """``(labels, far rows, threshold, medoids to propose)`` for the select modality's matrix
    ``F`` whose rows from ``n_before`` on are new.

    Distances are taken where the medoids were chosen (z-scored features with "zscore-medoids").
    The threshold comes from the data: the ``percentile`` (``$XMODAL_NEW_MEDOID_PERCENTILE``) of
    the earlier non-medoid items' distances to their nearest medoid; a new item beyond it is far.
    Medoids proposed: the far items beyond the share expected of items like the earlier ones
    ((100 - percentile)% of the new ones), divided by the mean cluster size of the earlier items (at
    least one when that excess is one item or more): the number k-medoids would give them at the
    project's density."""
    from xmodal.core.medoids import KMedoidsSelector
    from xmodal.project.medoids import zscore_medoids

    percentile = far_percentile() if percentile is None else float(percentile)
    medoids = ws.medoid_ids()
    rows = ws.row_of(ws.select)
    if not medoids:
        return None, np.zeros(0, np.int64), None, 0
    sel = KMedoidsSelector(len(medoids), standardize=zscore_medoids(ws))
    sel.medoid_indices_ = np.asarray([rows[m] for m in medoids], dtype=np.int64)
    labels, dist = sel.nearest(F)
    if percentile <= 0 or n_before >= len(F):
        return labels, np.zeros(0, np.int64), None, 0
    earlier = np.setdiff1d(np.arange(n_before), sel.medoid_indices_)
    if len(earlier) == 0:
        return labels, np.zeros(0, np.int64), None, 0
    threshold = float(np.percentile(dist[earlier], min(percentile, 100.0)))
    far = n_before + np.flatnonzero(dist[n_before:] > threshold)
    # new items like the earlier ones are beyond the percentile (100 - p)% of the time: only the
    # far items beyond that share are uncovered (1,000 shapes like 10,000 earlier ones: 40 far of
    # the 50 expected, no medoid)
    excess = len(far) - (len(F) - n_before) * (100.0 - min(percentile, 100.0)) / 100.0
    density = n_before / len(medoids)
    propose = 0 if excess < 1 else int(min(len(far), max(1, math.floor(excess / density + 0.5))))
    return labels, far, threshold, propose


# -- add / remove --------------------------------------------------------------------------------

def add_items(ws: Workspace, images: dict[str, str] | None = None, texts: dict[str, str] | None = None,
              *, feature_cache=None, workers_embed: bool = False, say: Say = quiet,
              progress: bool = False) -> ItemsChange:
    """Add what is new of ``images`` (id -> path) and ``texts`` (id -> text); see the module doc.
    ``progress``: a progress bar (stderr) while embedding."""
    if not ws.exists():
        raise DataError(f"no project at {ws.root}: create it first (xmodal project create)")
    change = ItemsChange()
    t_all = time.perf_counter()
    fresh_i, fresh_t, change.unchanged = new_items(ws, images or {}, texts or {})
    if fresh_i or fresh_t:
        say(f"{len(fresh_i)} new images, {len(fresh_t)} new texts "
            f"({change.unchanged['image']} + {change.unchanged['text']} already in the project)")
    embedded = {}
    t0 = time.perf_counter()
    for modality, fresh in (("image", fresh_i), ("text", fresh_t)):
        if not fresh:
            continue
        ids = list(fresh)
        F, failed = _embed(ws, modality, [fresh[i] for i in ids], feature_cache, workers_embed, say, progress)
        change.failed += [(ids[i], why) for i, why in sorted(failed.items())]
        keep = [i for i in range(len(ids)) if i not in failed]
        embedded[modality] = ([ids[i] for i in keep], [fresh[ids[i]] for i in keep], F[keep])
    change.seconds["embed_s"] = round(time.perf_counter() - t0, 3)
    if change.failed:
        say(f"warning: {len(change.failed)} item(s) could not be embedded and were not added "
            f"({'; '.join(f'{i}: {why}' for i, why in change.failed[:3])})")
    if not any(len(v[0]) for v in embedded.values()):
        change.seconds["total_s"] = round(time.perf_counter() - t_all, 3)
        return change
    t0 = time.perf_counter()
    with ws.items_lock():
        _append(ws, embedded, change, feature_cache, say)
    change.seconds["write_s"] = round(time.perf_counter() - t0, 3)
    change.seconds["total_s"] = round(time.perf_counter() - t_all, 3)
    return change


def _append(ws: Workspace, embedded: dict, change: ItemsChange, feature_cache, say: Say) -> None:
    """Under the item lock: the new rows, whatever another writer added since they were planned."""
    ids = {m: list(ws.ids(m)) for m in MODALITIES}
    contents = {m: list(ws.contents(m)) for m in MODALITIES}
    matrices = {m: ws.load_features(m) for m in MODALITIES}
    n_before = {m: len(ids[m]) for m in MODALITIES}
    for modality, (new_ids, new_contents, F) in embedded.items():
        known = set(ids[modality])
        keep = [j for j, i in enumerate(new_ids) if i not in known]   # added meanwhile: not twice
        if not keep:
            continue
        if F.shape[1] != matrices[modality].shape[1]:
            raise DataError(f"new {modality} features have {F.shape[1]} dimensions, the project's "
                            f"{matrices[modality].shape[1]}")
        ids[modality] += [new_ids[j] for j in keep]
        contents[modality] += [new_contents[j] for j in keep]
        matrices[modality] = np.concatenate([matrices[modality], F[keep]])
        change.added[modality] = [new_ids[j] for j in keep]
    if not any(change.added.values()):
        return
    info = {m: ws.features_info(m).get("encoder_id", "") for m in MODALITIES}
    ws.save_items(ids["image"], contents["image"], ids["text"], contents["text"])
    for m in MODALITIES:
        if change.added[m]:
            ws.save_features(m, matrices[m], info[m])
    if change.added["image"]:
        from xmodal.project.features import refresh_image_extras

        refresh_image_extras(ws, matrices["image"], info["image"], ws.config["encoders"].get("text") or "",
                             say, feature_cache)
    select = ws.select
    if change.added[select]:
        labels, far, threshold, propose = far_items(ws, matrices[select], n_before[select])
        sel = ws.selection
        if labels is not None and sel and sel.get("labels") is not None \
                and len(sel["labels"]) == n_before[select]:
            ws.save_selection(sel["medoid_ids"], list(sel["labels"]) + [int(x) for x in labels[n_before[select]:]],
                              modality=select)
        change.far = [ids[select][r] for r in far]
        change.far_threshold = None if threshold is None else round(threshold, 6)
        change.propose_medoids = propose
        if far.size:
            say(f"{len(far)} new {select}s are far from every medoid (distance > {threshold:.3f}, the "
                f"{far_percentile():g}th percentile of the earlier ones): {propose} new medoid(s) proposed")


def remove_items(ws: Workspace, image_ids=(), text_ids=(), say: Say = quiet) -> ItemsChange:
    """Drop these items (unknown ids are ignored); a removed medoid leaves the selection."""
    change = ItemsChange()
    gone = {"image": {str(i) for i in image_ids}, "text": {str(i) for i in text_ids}}
    with ws.items_lock():
        rows = {m: ws.row_of(m) for m in MODALITIES}
        gone = {m: {i for i in gone[m] if i in rows[m]} for m in MODALITIES}
        if not any(gone.values()):
            return change
        keep = {m: [r for i, r in rows[m].items() if i not in gone[m]] for m in MODALITIES}
        if not keep["image"] or not keep["text"]:
            raise DataError("removing these items would leave the project without images or texts")
        ids = {m: [ws.ids(m)[r] for r in keep[m]] for m in MODALITIES}
        contents = {m: [ws.contents(m)[r] for r in keep[m]] for m in MODALITIES}
        matrices = {m: ws.load_features(m)[keep[m]] for m in MODALITIES}
        info = {m: ws.features_info(m).get("encoder_id", "") for m in MODALITIES}
        sel = ws.selection
        ws.save_items(ids["image"], contents["image"], ids["text"], contents["text"])
        for m in MODALITIES:
            change.removed[m] = sorted(gone[m])
            if gone[m]:
                ws.save_features(m, matrices[m], info[m])
        if gone["image"]:
            from xmodal.project.features import refresh_image_extras

            refresh_image_extras(ws, matrices["image"], info["image"],
                                 ws.config["encoders"].get("text") or "", say)
        if sel and sel.get("medoid_ids"):
            select = sel.get("modality") or ws.select
            medoids = [m for m in sel["medoid_ids"] if m not in gone[select]]
            labels = None
            if medoids:
                ws.save_selection(medoids, None, modality=select)   # labels made below, of the new rows
                labels = far_items(ws, matrices[select], len(ids[select]))[0]
            ws.save_selection(medoids, None if labels is None else labels.tolist(), modality=select)
    say(f"removed {len(change.removed['image'])} images and {len(change.removed['text'])} texts")
    return change
