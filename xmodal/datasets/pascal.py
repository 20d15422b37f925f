"""The 100 Pascal-Sentences test pairs released with DSCMR (precomputed features)."""

from __future__ import annotations

import numpy as np

from xmodal.datasets.dataset import CrossModalDataset, _require_dir, _require_file
from xmodal.errors import DataError

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
