"""The Wikipedia data set of Rasiwasia et al. 2010 (the paper's): official features and 2173/693 split."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xmodal.datasets.dataset import CrossModalDataset, _require_dir, _require_file
from xmodal.errors import DataError

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
