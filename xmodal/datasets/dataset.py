"""The one in-memory type every loader returns (:class:`CrossModalDataset`) and the loaders' shared checks."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from xmodal.errors import DataError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


@dataclass
class CrossModalDataset:
    """Two collections, their couplings, optional labels and split.

    Exactly one of ``image_paths`` / ``image_features`` is usually set (both is allowed); the same
    for ``texts`` / ``text_features``. ``pairs`` is an (k, 2) int64 array of ground-truth couplings
    ``(image row, text row)``. ``image_split`` / ``text_split`` hold ``"train"``/``"test"`` per item
    when the data set comes with a split (Wikipedia), else None.
    """

    name: str
    image_ids: list[str]
    text_ids: list[str]
    pairs: np.ndarray
    image_paths: list[Path] | None = None
    image_features: np.ndarray | None = None
    texts: list[str] | None = None
    text_features: np.ndarray | None = None
    image_labels: np.ndarray | None = None
    text_labels: np.ndarray | None = None
    image_split: np.ndarray | None = None
    text_split: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.pairs = np.asarray(self.pairs, dtype=np.int64).reshape(-1, 2)
        for attr, n in (("image_paths", self.n_images), ("image_features", self.n_images),
                        ("image_labels", self.n_images), ("image_split", self.n_images),
                        ("texts", self.n_texts), ("text_features", self.n_texts),
                        ("text_labels", self.n_texts), ("text_split", self.n_texts)):
            value = getattr(self, attr)
            if value is not None and len(value) != n:
                raise DataError(f"{self.name}: {attr} has {len(value)} rows, expected {n}")
        if self.pairs.size and (self.pairs.min() < 0 or self.pairs[:, 0].max() >= self.n_images
                                or self.pairs[:, 1].max() >= self.n_texts):
            raise DataError(f"{self.name}: a pair names an item outside the "
                            f"{self.n_images} images / {self.n_texts} texts")

    # -- sizes and views ------------------------------------------------------------------
    @property
    def n_images(self) -> int:
        return len(self.image_ids)

    @property
    def n_texts(self) -> int:
        return len(self.text_ids)

    @property
    def has_labels(self) -> bool:
        return self.image_labels is not None and self.text_labels is not None

    @property
    def has_split(self) -> bool:
        return self.image_split is not None and self.text_split is not None

    def text_of_image(self) -> np.ndarray:
        """For every image row, the first text row coupled with it (-1 when none)."""
        out = np.full(self.n_images, -1, dtype=np.int64)
        for i, t in self.pairs[::-1]:  # reversed so that the first pair wins
            out[i] = t
        return out

    def subset(self, image_rows, text_rows, name: str | None = None) -> CrossModalDataset:
        """The data set restricted to the given rows (in that order); pairs are re-indexed and
        pairs with an item outside the subset are dropped."""
        image_rows = np.asarray(image_rows, dtype=np.int64)
        text_rows = np.asarray(text_rows, dtype=np.int64)
        img_map = np.full(self.n_images, -1, dtype=np.int64)
        img_map[image_rows] = np.arange(len(image_rows))
        txt_map = np.full(self.n_texts, -1, dtype=np.int64)
        txt_map[text_rows] = np.arange(len(text_rows))
        p = np.stack([img_map[self.pairs[:, 0]], txt_map[self.pairs[:, 1]]], axis=1) \
            if self.pairs.size else self.pairs
        p = p[(p >= 0).all(axis=1)] if p.size else p

        def pick(seq, rows):
            if seq is None:
                return None
            if isinstance(seq, np.ndarray):
                return seq[rows]
            return [seq[i] for i in rows]

        return replace(
            self, name=name or self.name,
            image_ids=pick(self.image_ids, image_rows), text_ids=pick(self.text_ids, text_rows),
            pairs=p, image_paths=pick(self.image_paths, image_rows),
            image_features=pick(self.image_features, image_rows), texts=pick(self.texts, text_rows),
            text_features=pick(self.text_features, text_rows),
            image_labels=pick(self.image_labels, image_rows),
            text_labels=pick(self.text_labels, text_rows),
            image_split=pick(self.image_split, image_rows), text_split=pick(self.text_split, text_rows),
            meta=dict(self.meta))

    def split(self, which: str) -> CrossModalDataset:
        """Items whose split is ``which`` ("train" or "test")."""
        if not self.has_split:
            raise DataError(f"{self.name} has no train/test split")
        return self.subset(np.flatnonzero(self.image_split == which),
                           np.flatnonzero(self.text_split == which), name=f"{self.name}:{which}")

    def describe(self) -> str:
        parts = [f"{self.name}: {self.n_images} images, {self.n_texts} texts, {len(self.pairs)} pairs"]
        if self.has_labels:
            parts.append(f"{len(np.unique(np.concatenate([self.image_labels, self.text_labels]).astype(str)))} classes")
        if self.has_split:
            parts.append(f"train/test {int((self.image_split == 'train').sum())}/"
                         f"{int((self.image_split == 'test').sum())} images")
        skipped = self.meta.get("skipped_images") or []
        if skipped:
            parts.append(f"{len(skipped)} image file(s) skipped: {', '.join(skipped[:5])}"
                         + (" …" if len(skipped) > 5 else ""))
        return ", ".join(parts)


def _require_dir(path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{what}: folder {path} does not exist; pass the path of the data set folder")
    if not path.is_dir():
        raise DataError(f"{what}: {path} is not a folder")
    return path


def _require_file(path: Path, what: str, hint: str = "") -> Path:
    if not path.is_file():
        raise DataError(f"{what}: {path} is missing{'; ' + hint if hint else ''}")
    return path


def _short_list(items, limit: int = 10) -> str:
    items = list(items)
    more = f" … and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(repr(x) if isinstance(x, str) else str(x) for x in items[:limit]) + more
