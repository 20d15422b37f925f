"""Cross-modal data sets: one in-memory type and the loaders that build it.

:class:`CrossModalDataset` holds two collections (images, texts), optional labels per item, the
ground-truth couplings between them and an optional train/test split. Images come either as file
paths (to be embedded by :mod:`xmodal.encoders`) or as precomputed feature rows; the same for texts.

Loaders
-------
- :func:`load_folder` — the generic format users bring (spec below).
- :func:`load_wikipedia` — Rasiwasia et al. 2010, official features and 2173/693 split.
- :func:`load_coco_mini` — 159 raw COCO images with 5 captions each (``pairs.json``).
- :func:`load_pascal_dscmr` — the 100 Pascal-Sentences test pairs released with DSCMR (features).

The generic folder format
-------------------------
::

    my_data/
      images/              any image files (.jpg .jpeg .png .bmp .gif .webp .tif .tiff), nested
                           folders allowed; hidden files/folders (".name") are ignored
      texts.jsonl          one JSON object per line (or texts.csv with the same columns, header row)
      images.jsonl         optional: image labels (and, optionally, splits)

- **image id** = the file's path relative to ``images/`` with POSIX separators, e.g.
  ``"cats/001.jpg"``. Ids are case-sensitive.
- **texts.jsonl**, one object per line (blank lines are skipped)::

      {"id": "t1", "text": "A cat on a sofa.", "image": "cats/001.jpg", "label": "cat"}

  ``id`` (string, unique) and ``text`` (non-empty string) are required. ``image`` is optional: the
  id of the image this text describes (a ground-truth pair; several texts may describe the same
  image). ``label`` is optional (any JSON scalar; compared as a string). ``split`` is optional:
  ``"train"`` or ``"test"``; when any item has a split, items without one count as ``"train"``.
- **texts.csv**: the same columns (``id,text`` required; ``image,label,split`` optional; empty cell
  = absent). Used only when ``texts.jsonl`` is absent.
- **images.jsonl** (optional), one object per line: ``{"id": "cats/001.jpg", "label": "cat"}``
  (``split`` optional as above). Every id must name a file under ``images/``. An image listed
  without a label, or not listed, inherits the label of the texts that describe it when they all
  agree.

Errors (:class:`~xmodal.errors.DataError`, the message says what to fix): missing folder,
``images/`` or texts file; empty texts (their ids are listed); duplicate text ids or duplicate
``images.jsonl`` ids; a text's ``image`` (or an ``images.jsonl`` id) that names no file under
``images/`` (mismatched pair ids, listed); malformed JSON lines / CSV rows (line numbers listed);
no images. Unreadable or corrupt image files are NOT checked here: that is the encoder's job
(it skips them and lists them in ``failures_``).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from xmodal.errors import DataError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

#: default location of the shared real data sets, relative to this repository
DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data"

DATASETS = ("wikipedia", "coco-mini", "pascal-dscmr", "folder")


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

    def subset(self, image_rows, text_rows, name: str | None = None) -> "CrossModalDataset":
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

    def split(self, which: str) -> "CrossModalDataset":
        """Items whose split is ``which`` ("train" or "test")."""
        if not self.has_split:
            raise DataError(f"{self.name} has no train/test split")
        return self.subset(np.flatnonzero(self.image_split == which),
                           np.flatnonzero(self.text_split == which), name=f"{self.name}:{which}")

    def describe(self) -> str:
        parts = [f"{self.name}: {self.n_images} images, {self.n_texts} texts, {len(self.pairs)} pairs"]
        if self.has_labels:
            parts.append(f"{len(np.unique(np.concatenate([self.image_labels, self.text_labels]).astype(str)))} labels")
        if self.has_split:
            parts.append(f"train/test {int((self.image_split == 'train').sum())}/"
                         f"{int((self.image_split == 'test').sum())} images")
        return ", ".join(parts)


# -- helpers ----------------------------------------------------------------------------------

def default_data_path(dataset: str) -> Path:
    """Where the shared copy of a named data set lives (may not exist)."""
    sub = {"wikipedia": "wikipedia_rasiwasia", "coco-mini": "coco_mini",
           "pascal-dscmr": "pascal_sentences"}.get(dataset)
    if sub is None:
        raise DataError(f"no default location for data set {dataset!r}; pass --data PATH")
    return DEFAULT_DATA_ROOT / sub


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


def load(dataset: str, path=None, **kwargs) -> CrossModalDataset:
    """Load a data set by name (``wikipedia``, ``coco-mini``, ``pascal-dscmr``, ``folder``)."""
    loaders = {"wikipedia": load_wikipedia, "coco-mini": load_coco_mini,
               "pascal-dscmr": load_pascal_dscmr, "folder": load_folder}
    if dataset not in loaders:
        from xmodal.errors import ConfigError
        raise ConfigError(f"unknown data set {dataset!r}; use one of {', '.join(loaders)}")
    if path is None:
        if dataset == "folder":
            raise DataError("the folder data set needs --data PATH")
        path = default_data_path(dataset)
    return loaders[dataset](path, **kwargs)


# -- Wikipedia --------------------------------------------------------------------------------

def load_wikipedia(path) -> CrossModalDataset:
    """Wikipedia (Rasiwasia et al. 2010), official features and split.

    ``path`` is the ``wikipedia_rasiwasia`` folder (or the ``.npz`` file itself). Images are
    128-d SIFT bag-of-words histograms, texts 10-topic LDA proportions; 2173 train + 693 test pairs,
    10 classes (labels 0..9). Row i of the images is coupled with row i of the texts.
    """
    path = Path(path).expanduser()
    npz = path if path.suffix == ".npz" else _require_dir(path, "wikipedia") / "wikipedia_rasiwasia.npz"
    _require_file(npz, "wikipedia", "expected the official features as wikipedia_rasiwasia.npz")
    with np.load(npz) as d:
        missing = {"img_train", "txt_train", "lab_train", "img_test", "txt_test", "lab_test"} - set(d.files)
        if missing:
            raise DataError(f"wikipedia: {npz} lacks arrays {sorted(missing)}")
        n_tr, n_te = len(d["lab_train"]), len(d["lab_test"])
        img = np.vstack([d["img_train"], d["img_test"]]).astype(np.float32)
        txt = np.vstack([d["txt_train"], d["txt_test"]]).astype(np.float32)
        lab = np.concatenate([d["lab_train"], d["lab_test"]]).astype(np.int64)
        img_ids = [str(x) for x in np.concatenate([d["img_id_train"], d["img_id_test"]])] \
            if "img_id_train" in d.files else [f"img{i}" for i in range(n_tr + n_te)]
        txt_ids = [str(x) for x in np.concatenate([d["txt_id_train"], d["txt_id_test"]])] \
            if "txt_id_train" in d.files else [f"txt{i}" for i in range(n_tr + n_te)]
    split = np.array(["train"] * n_tr + ["test"] * n_te)
    n = n_tr + n_te
    categories = None
    cat_file = npz.parent / "categories.list"
    if cat_file.is_file():
        categories = [line.strip() for line in cat_file.read_text().splitlines() if line.strip()]
    return CrossModalDataset(
        name="wikipedia", image_ids=img_ids, text_ids=txt_ids,
        pairs=np.stack([np.arange(n), np.arange(n)], axis=1),
        image_features=img, text_features=txt, image_labels=lab, text_labels=lab.copy(),
        image_split=split, text_split=split.copy(),
        meta={"source": str(npz), "categories": categories,
              "features": "SIFT BoW 128-d images, LDA 10-topic texts (official 2010 features)"})


# -- COCO-mini --------------------------------------------------------------------------------

def load_coco_mini(path, captions: str = "first") -> CrossModalDataset:
    """COCO-mini: raw images with their human captions, from ``pairs.json``.

    ``captions="first"``: one text per image (its first caption), text row i ↔ image row i.
    ``captions="all"``: the 5 captions of every image, text rows ``5i..5i+4`` ↔ image row i.
    No labels for MAP (the COCO protocol is Recall@K on the coupling); the object categories of
    each image are in ``meta["image_categories"]`` and the original COCO split in
    ``meta["coco_split"]``.
    """
    if captions not in ("first", "all"):
        from xmodal.errors import ConfigError
        raise ConfigError(f"captions must be 'first' or 'all', not {captions!r}")
    root = _require_dir(path, "coco-mini")
    pairs_file = _require_file(root / "pairs.json", "coco-mini", "expected pairs.json in the COCO-mini folder")
    try:
        entries = json.loads(pairs_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"coco-mini: cannot read {pairs_file}: {exc}") from exc
    image_ids, image_paths, texts, text_ids, pairs, cats, splits = [], [], [], [], [], [], []
    missing = []
    for entry in entries:
        file = root / entry["file"]
        if not file.is_file():
            missing.append(entry["file"])
            continue
        caps = [c.strip() for c in entry.get("captions", []) if c and c.strip()]
        if not caps:
            continue
        row = len(image_ids)
        image_ids.append(entry["file"])
        image_paths.append(file)
        cats.append(list(entry.get("categories", [])))
        splits.append(entry.get("split"))
        for j, cap in enumerate(caps if captions == "all" else caps[:1]):
            pairs.append((row, len(texts)))
            text_ids.append(f"{entry.get('image_id', entry['file'])}#{j}")
            texts.append(cap)
    if missing:
        raise DataError(f"coco-mini: {len(missing)} image files named in pairs.json are missing: "
                        f"{_short_list(missing)}")
    if not image_ids:
        raise DataError(f"coco-mini: {pairs_file} lists no image with captions")
    return CrossModalDataset(
        name="coco-mini", image_ids=image_ids, text_ids=text_ids, pairs=np.asarray(pairs),
        image_paths=image_paths, texts=texts,
        meta={"source": str(pairs_file), "captions": captions, "image_categories": cats,
              "coco_split": splits})


# -- Pascal-Sentences (DSCMR features) ---------------------------------------------------------

def load_pascal_dscmr(path) -> CrossModalDataset:
    """The 100 Pascal-Sentences test pairs released with DSCMR (Zhen et al., CVPR 2019).

    ``path`` is the ``pascal_sentences`` folder (or its ``dscmr_features`` sub-folder).
    Available: 100 complete image–text–label triples (VGG19 fc7 4096-d image features — the
    features the SSM-AL paper used — and 300-d sentence-CNN text features; 20 classes × 5).
    NOT available: the 800 training image features (only ``train_txt.mat`` and the training
    labels ship), so there is no official train split: the evaluation chooses the references
    among the 100 pairs and retrieves over the rest (like COCO-mini), with MAP on the labels.
    """
    import scipy.io

    root = _require_dir(path, "pascal-dscmr")
    feat_dir = root / "dscmr_features" if (root / "dscmr_features").is_dir() else root
    arrays = {}
    for name in ("test_img", "test_txt", "test_img_lab"):
        f = _require_file(feat_dir / f"{name}.mat", "pascal-dscmr",
                          "expected the DSCMR test features (test_img.mat, test_txt.mat, test_img_lab.mat)")
        try:
            arrays[name] = np.asarray(scipy.io.loadmat(f)[name])
        except Exception as exc:  # scipy raises several types for corrupt .mat files
            raise DataError(f"pascal-dscmr: cannot read {f}: {exc}") from exc
    img, txt = arrays["test_img"].astype(np.float32), arrays["test_txt"].astype(np.float32)
    lab = arrays["test_img_lab"].reshape(-1).astype(np.int64)
    if not (len(img) == len(txt) == len(lab)):
        raise DataError(f"pascal-dscmr: {len(img)} image rows, {len(txt)} text rows, {len(lab)} labels")
    n = len(img)
    return CrossModalDataset(
        name="pascal-dscmr", image_ids=[f"test_img{i}" for i in range(n)],
        text_ids=[f"test_txt{i}" for i in range(n)], pairs=np.stack([np.arange(n)] * 2, axis=1),
        image_features=img, text_features=txt, image_labels=lab, text_labels=lab.copy(),
        meta={"source": str(feat_dir),
              "features": "VGG19 fc7 4096-d images, sentence-CNN 300-d texts (DSCMR release)",
              "not_available": "the 800 training image features"})


# -- the generic folder format ---------------------------------------------------------------

def _read_jsonl(file: Path, what: str) -> list[tuple[int, dict]]:
    rows, bad = [], []
    try:
        lines = file.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{what}: cannot read {file}: {exc}") from exc
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            bad.append(lineno)
            continue
        if not isinstance(obj, dict):
            bad.append(lineno)
            continue
        rows.append((lineno, obj))
    if bad:
        raise DataError(f"{what}: {file.name} has lines that are not JSON objects: line(s) "
                        f"{_short_list(bad)}; write one {{\"id\": ..., ...}} object per line")
    return rows


def _read_csv(file: Path, what: str) -> list[tuple[int, dict]]:
    try:
        with file.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None:
                return []
            rows = []
            for row in reader:
                if None in row:  # more cells than header columns
                    raise DataError(f"{what}: {file.name} line {reader.line_num} has more cells than "
                                    f"the header ({', '.join(reader.fieldnames)})")
                rows.append((reader.line_num, {k.strip(): v for k, v in row.items()
                                               if k is not None and v not in (None, "")}))
            return rows
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{what}: cannot read {file}: {exc}") from exc


def _scan_images(images_dir: Path) -> list[str]:
    ids = []
    for p in images_dir.rglob("*"):
        rel = p.relative_to(images_dir)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
            ids.append(rel.as_posix())
    return sorted(ids)


def _label_value(v):
    return None if v is None or v == "" else str(v)


def _split_value(v, where: str):
    if v is None or v == "":
        return None
    if v not in ("train", "test"):
        raise DataError(f"{where}: split must be \"train\" or \"test\", not {v!r}")
    return v


def load_folder(path) -> CrossModalDataset:
    """Load the generic folder format (see the module docstring for the spec)."""
    root = _require_dir(path, "folder data set")
    images_dir = root / "images"
    if not images_dir.is_dir():
        raise DataError(f"folder data set: {images_dir} is missing; put the image files under images/")
    jsonl, csv_file = root / "texts.jsonl", root / "texts.csv"
    if jsonl.is_file():
        text_rows, text_file = _read_jsonl(jsonl, "folder data set"), jsonl
    elif csv_file.is_file():
        text_rows, text_file = _read_csv(csv_file, "folder data set"), csv_file
    else:
        raise DataError(f"folder data set: neither {jsonl.name} nor {csv_file.name} found in {root}; "
                        "write one {\"id\", \"text\", \"image\"?, \"label\"?} record per text")

    image_ids = _scan_images(images_dir)
    if not image_ids:
        raise DataError(f"folder data set: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) "
                        f"under {images_dir}")
    image_row = {iid: i for i, iid in enumerate(image_ids)}

    # texts
    if not text_rows:
        raise DataError(f"folder data set: {text_file.name} has no records")
    no_id = [ln for ln, r in text_rows if not isinstance(r.get("id"), (str, int)) or str(r.get("id")).strip() == ""]
    if no_id:
        raise DataError(f"folder data set: {text_file.name} records without an \"id\" at line(s) "
                        f"{_short_list(no_id)}")
    ids = [str(r["id"]) for _, r in text_rows]
    seen, dups = set(), []
    for i in ids:
        if i in seen and i not in dups:
            dups.append(i)
        seen.add(i)
    if dups:
        raise DataError(f"folder data set: duplicate text ids in {text_file.name}: {_short_list(dups)}; "
                        "every text needs its own id")
    empty = [str(r["id"]) for _, r in text_rows
             if not isinstance(r.get("text"), str) or not r.get("text").strip()]
    if empty:
        raise DataError(f"folder data set: {len(empty)} text(s) in {text_file.name} are empty or lack "
                        f"a \"text\" field: {_short_list(empty)}; fill them in or remove them")
    unknown = [(str(r["id"]), str(r["image"])) for _, r in text_rows
               if r.get("image") not in (None, "") and str(r["image"]) not in image_row]
    if unknown:
        listed = _short_list(f"{t} -> {i}" for t, i in unknown)
        raise DataError(f"folder data set: {len(unknown)} text(s) name an image that is not under "
                        f"images/ (mismatched pair ids): {listed}; an image id is the file path "
                        f"relative to images/ with '/' separators, e.g. 'cats/001.jpg'")
    texts = [r["text"].strip() for _, r in text_rows]
    pairs = [(image_row[str(r["image"])], t) for t, (_, r) in enumerate(text_rows)
             if r.get("image") not in (None, "")]
    text_labels = [_label_value(r.get("label")) for _, r in text_rows]
    text_split = [_split_value(r.get("split"), f"{text_file.name} text {r['id']!r}") for _, r in text_rows]

    # image labels
    image_labels: list[str | None] = [None] * len(image_ids)
    image_split: list[str | None] = [None] * len(image_ids)
    labels_file = root / "images.jsonl"
    if labels_file.is_file():
        rows = _read_jsonl(labels_file, "folder data set")
        no_id = [ln for ln, r in rows if r.get("id") in (None, "")]
        if no_id:
            raise DataError(f"folder data set: images.jsonl records without an \"id\" at line(s) {_short_list(no_id)}")
        seen, dups = set(), []
        for _, r in rows:
            i = str(r["id"])
            if i in seen and i not in dups:
                dups.append(i)
            seen.add(i)
        if dups:
            raise DataError(f"folder data set: duplicate image ids in images.jsonl: {_short_list(dups)}")
        unknown = [str(r["id"]) for _, r in rows if str(r["id"]) not in image_row]
        if unknown:
            raise DataError(f"folder data set: images.jsonl names {len(unknown)} image(s) that are not "
                            f"under images/: {_short_list(unknown)}")
        for _, r in rows:
            image_labels[image_row[str(r["id"])]] = _label_value(r.get("label"))
            image_split[image_row[str(r["id"])]] = _split_value(r.get("split"), f"images.jsonl image {r['id']!r}")
    # inherit labels / splits from the texts that describe an image, when they agree
    for attr_img, attr_txt in ((image_labels, text_labels), (image_split, text_split)):
        votes: dict[int, set] = {}
        for i, t in pairs:
            if attr_txt[t] is not None:
                votes.setdefault(i, set()).add(attr_txt[t])
        for i, vals in votes.items():
            if attr_img[i] is None and len(vals) == 1:
                attr_img[i] = next(iter(vals))

    def as_array(values):
        if all(v is None for v in values):
            return None
        return np.array(["" if v is None else v for v in values], dtype=object)

    img_lab, txt_lab = as_array(image_labels), as_array(text_labels)
    img_split, txt_split = as_array(image_split), as_array(text_split)
    if img_split is not None or txt_split is not None:  # items without a split count as train
        img_split = np.array([v or "train" for v in image_split])
        txt_split = np.array([v or "train" for v in text_split])
    meta = {"source": str(root), "text_file": text_file.name}
    if img_lab is not None and txt_lab is not None and (np.any(img_lab == "") or np.any(txt_lab == "")):
        meta["unlabelled_items"] = int((img_lab == "").sum() + (txt_lab == "").sum())
    return CrossModalDataset(
        name=root.name or "folder", image_ids=image_ids, text_ids=ids, pairs=np.asarray(pairs, dtype=np.int64),
        image_paths=[images_dir / i for i in image_ids], texts=texts,
        image_labels=img_lab, text_labels=txt_lab,
        image_split=img_split, text_split=txt_split,
        meta=meta)
