"""Data ready for evaluation: features (precomputed, or embedded and cached), one text per image,
labels and the split, row-aligned (the input of :func:`xmodal.evaluation.protocol.evaluate`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xmodal.datasets.dataset import CrossModalDataset
from xmodal.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class EvalData:
    """Row-aligned coupled items: image row i is coupled with text row i (its first text).

    ``train`` is a boolean mask (split protocol) or None (pool protocol). ``caption_groups[i]``
    lists the rows of ``all_text_features`` that describe image i (for caption averaging).
    """

    name: str
    image_features: np.ndarray
    text_features: np.ndarray
    image_labels: np.ndarray | None = None
    text_labels: np.ndarray | None = None
    train: np.ndarray | None = None
    all_text_features: np.ndarray | None = None
    caption_groups: list[np.ndarray] | None = None
    meta: dict = field(default_factory=dict)
    # the class bridge (xmodal.core.bridge): each image in the text encoder's space; None when the
    # image features come with no classifier (precomputed) or the text encoder is fitted (SIF)
    image_bridge: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.image_features)

    @property
    def protocol(self) -> str:
        return "split" if self.train is not None else "pool"

    @property
    def labelled(self) -> bool:
        return self.image_labels is not None and self.text_labels is not None

    @property
    def has_captions(self) -> bool:
        return self.caption_groups is not None and any(len(g) > 1 for g in self.caption_groups)

    def pool_rows(self) -> np.ndarray:
        return np.flatnonzero(self.train) if self.train is not None else np.arange(self.n)


def _embed(items, modality: str, name: str, cache_dir, progress: bool):
    from xmodal.encoders import get_encoder
    from xmodal.encoders.base import check_failures, valid_rows
    from xmodal.encoders.cache import FeatureCache, embed_with_cache

    encoder = get_encoder(modality, name, progress=progress) if name else get_encoder(modality, progress=progress)
    cache = FeatureCache(Path(cache_dir) / "features" if cache_dir else None)
    F, failures = embed_with_cache(encoder, [str(i) for i in items], cache, fit=True, progress=progress)
    check_failures(len(items), failures, modality, encoder.name or name)
    return F, valid_rows(F), failures, encoder.encoder_id


def _labels(values, n_rows) -> np.ndarray | None:
    if values is None:
        return None
    out = np.asarray(values).astype(str).astype(object)
    unlabelled = np.flatnonzero((out == "") | (out == "None"))
    for i in unlabelled:  # never relevant to anything: a unique label per unlabelled item
        out[i] = f"\x00unlabelled-{i}"
    return out


def prepare(dataset: CrossModalDataset, *, image_encoder: str | None = None,
            text_encoder: str | None = None, cache_dir=None, progress: bool = True) -> EvalData:
    """Features (precomputed, or computed with the encoders and cached), one text per image,
    labels and split, ready for :func:`evaluate`.

    Images the encoder cannot read are skipped and listed in ``meta["failures"]``; images without
    any text and texts without an image cannot be evaluated and are counted in ``meta``.
    """
    meta = {"dataset": dataset.name, **{k: v for k, v in dataset.meta.items()
                                        if isinstance(v, (str, int, float))}}
    X = dataset.image_features
    image_ok = np.ones(dataset.n_images, dtype=bool)
    failures = []
    if X is None:
        if dataset.image_paths is None:
            raise DataError(f"{dataset.name}: no image features and no image files")
        X, image_ok, fails, meta["image_encoder"] = _embed(dataset.image_paths, "image", image_encoder,
                                                          cache_dir, progress)
        failures += [f"{item}: {why}" for item, why in fails]
    Y = dataset.text_features
    text_ok = np.ones(dataset.n_texts, dtype=bool)
    if Y is None:
        if dataset.texts is None:
            raise DataError(f"{dataset.name}: no text features and no texts")
        from xmodal.encoders.language import resolve_text_encoder

        text_encoder, meta["text_encoder_choice"] = resolve_text_encoder(text_encoder, dataset.texts)
        meta["text_encoder_name"] = text_encoder
        Y, text_ok, fails, meta["text_encoder"] = _embed(dataset.texts, "text", text_encoder,
                                                        cache_dir, progress)
        failures += [f"text {item!r}: {why}" for item, why in fails]
    if failures:
        log.warning("%d item(s) could not be embedded and are skipped: %s", len(failures),
                    "; ".join(failures[:5]) + (" …" if len(failures) > 5 else ""))
        meta["failures"] = failures
    pairs = dataset.pairs[image_ok[dataset.pairs[:, 0]] & text_ok[dataset.pairs[:, 1]]] \
        if len(dataset.pairs) else dataset.pairs
    groups: dict[int, list[int]] = {}
    for i, t in pairs:
        groups.setdefault(int(i), []).append(int(t))
    rows = np.array(sorted(groups), dtype=np.int64)
    if len(rows) < 3:
        raise DataError(f"{dataset.name}: {len(rows)} coupled image–text pairs after skipping "
                        "unreadable items; the evaluation needs ground-truth pairs (texts with an "
                        "\"image\" field in the folder format)")
    first = np.array([groups[int(i)][0] for i in rows], dtype=np.int64)
    meta["images_without_text"] = int(dataset.n_images - len(rows))
    meta["texts_without_image"] = int(dataset.n_texts - len(np.unique(pairs[:, 1])))
    train = None
    if dataset.has_split:
        img_train = np.asarray(dataset.image_split)[rows] == "train"
        txt_train = np.asarray(dataset.text_split)[first] == "train"
        if np.any(img_train != txt_train):
            raise DataError(f"{dataset.name}: {int((img_train != txt_train).sum())} coupled pairs have "
                            "the image and its text in different splits; give both the same split")
        train = img_train
        if train.all() or not train.any():
            train = None  # one split only: evaluate over the pool
    image_bridge = None
    if meta.get("image_encoder") and meta.get("text_encoder_name") and \
            not str(meta["text_encoder_name"]).startswith("sif"):
        image_bridge = _image_bridge(np.asarray(X, np.float32)[rows], meta["image_encoder"],
                                     meta["text_encoder_name"], cache_dir, progress)
    text_rows_all = np.unique(np.concatenate([np.asarray(groups[int(i)]) for i in rows]))
    text_index = {int(t): k for k, t in enumerate(text_rows_all)}
    caption_groups = [np.array([text_index[t] for t in groups[int(i)]], dtype=np.int64) for i in rows]
    return EvalData(
        name=dataset.name, image_features=np.asarray(X, np.float32)[rows],
        text_features=np.asarray(Y, np.float32)[first],
        image_labels=(None if dataset.image_labels is None
                      else _labels(np.asarray(dataset.image_labels)[rows], len(rows))),
        text_labels=None if dataset.text_labels is None else _labels(np.asarray(dataset.text_labels)[first], len(rows)),
        train=train, all_text_features=np.asarray(Y, np.float32)[text_rows_all],
        caption_groups=caption_groups, meta=meta, image_bridge=image_bridge)


def _image_bridge(X, image_encoder_id: str, text_encoder: str, cache_dir, progress: bool):
    """Bridge embeddings of the images (as ``project create`` makes them), or None."""
    from xmodal.encoders.image_words import class_bridge

    found = class_bridge(X, image_encoder_id,
                         lambda prompts: _embed(prompts, "text", text_encoder, cache_dir, progress)[0])
    return None if found is None else found[0]
