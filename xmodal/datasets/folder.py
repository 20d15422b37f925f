"""The generic folder format users bring (``images/`` + ``texts.jsonl`` or ``texts.csv``); the spec is in
:mod:`xmodal.datasets`."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np

from xmodal.datasets.dataset import IMAGE_EXTENSIONS, CrossModalDataset, _require_dir, _short_list
from xmodal.errors import DataError

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


def _scan_images(images_dir: Path, root: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """Image ids (paths relative to images/) and the files skipped, with why: a link whose
    target lies outside the data folder (it would make any file of the machine an item) and a
    file this process cannot read (it would become an all-zero feature row)."""
    ids, skipped = [], []
    inside = root.resolve()
    for p in images_dir.rglob("*"):
        rel = p.relative_to(images_dir)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if p.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if p.is_symlink() and not p.exists():
            skipped.append((rel.as_posix(), "a broken link"))
        elif not p.is_file():
            continue
        elif not p.resolve().is_relative_to(inside):
            skipped.append((rel.as_posix(), "a link that leaves the data folder"))
        elif not os.access(p, os.R_OK):
            skipped.append((rel.as_posix(), "not readable"))
        else:
            ids.append(rel.as_posix())
    return sorted(ids), sorted(skipped)


def image_files(folder) -> list[str]:
    """The image files under ``folder`` (nested folders too), by the rules of a data folder's
    ``images/``, as sorted paths; DataError when there is none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    ids, _ = _scan_images(folder, folder)
    if not ids:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {folder}")
    return [str(folder / i) for i in ids]


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

    image_ids, skipped = _scan_images(images_dir, root)
    skipped_ids = {i for i, _ in skipped}
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
               if r.get("image") not in (None, "") and str(r["image"]) not in image_row
               and str(r["image"]) not in skipped_ids]
    if unknown:
        listed = _short_list(f"{t} -> {i}" for t, i in unknown)
        raise DataError(f"folder data set: {len(unknown)} text(s) name an image that is not under "
                        f"images/ (mismatched pair ids): {listed}; an image id is the file path "
                        f"relative to images/ with '/' separators, e.g. 'cats/001.jpg'")
    texts = [r["text"].strip() for _, r in text_rows]
    pairs = [(image_row[str(r["image"])], t) for t, (_, r) in enumerate(text_rows)
             if r.get("image") not in (None, "") and str(r["image"]) in image_row]
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
    if skipped:
        meta["skipped_images"] = [f"{i} ({why})" for i, why in skipped]
    if img_lab is not None and txt_lab is not None and (np.any(img_lab == "") or np.any(txt_lab == "")):
        meta["unlabelled_items"] = int((img_lab == "").sum() + (txt_lab == "").sum())
    return CrossModalDataset(
        name=root.name or "folder", image_ids=image_ids, text_ids=ids, pairs=np.asarray(pairs, dtype=np.int64),
        image_paths=[images_dir / i for i in image_ids], texts=texts,
        image_labels=img_lab, text_labels=txt_lab,
        image_split=img_split, text_split=txt_split,
        meta=meta)


def write_folder(out, images: dict, texts: list[dict]) -> Path:
    """Write a data set in the folder format (the inverse of :func:`load_folder`): ``images``
    maps an image id (its path under ``images/``) to the file it comes from, hard-linked where the
    file system allows, else copied (the format refuses links that leave the folder); ``texts``
    are the ``texts.jsonl`` records (``id``, ``text``, optional ``image`` / ``label`` / ``split``).
    Returns the folder."""
    out = Path(out)
    for image_id, source in images.items():
        target = out / "images" / image_id
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            try:
                os.link(source, target)
            except OSError:                       # another file system
                shutil.copy2(source, target)
    (out / "images").mkdir(parents=True, exist_ok=True)
    with open(out / "texts.jsonl", "w", encoding="utf-8") as fh:
        for record in texts:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    return out
