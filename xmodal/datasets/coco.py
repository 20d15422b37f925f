"""COCO-mini: 159 raw COCO images with 5 captions each (``pairs.json``), one or all captions per image."""

from __future__ import annotations

import json

import numpy as np

from xmodal.datasets.dataset import CrossModalDataset, _require_dir, _require_file, _short_list
from xmodal.errors import DataError

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
