"""Cross-modal data sets: one in-memory type and the loaders that build it.

:class:`CrossModalDataset` holds two collections (images, texts), optional labels per item, the
ground-truth couplings between them and an optional train/test split. Images come either as file
paths (to be embedded by :mod:`xmodal.encoders`) or as precomputed feature rows; the same for texts.

Loaders (one module each; all importable from ``xmodal.datasets``)
------------------------------------------------------------------
- :func:`load_folder` — the generic format users bring (spec below; :mod:`.folder`);
  :func:`write_folder` writes it.
- :func:`load_data` — what ``xmodal project create --data`` takes: a COCO-mini folder or the
  generic format.
- :func:`load_wikipedia` — Rasiwasia et al. 2010, official features and 2173/693 split (:mod:`.wikipedia`).
- :func:`load_coco_mini` — 159 raw COCO images with 5 captions each (``pairs.json``, :mod:`.coco`).
- :func:`load_pascal_dscmr` — the 100 Pascal-Sentences test pairs released with DSCMR (features, :mod:`.pascal`).
- :mod:`.synthetic` — a deterministic shapes data set (``xmodal generate``).

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

from pathlib import Path

from xmodal.datasets.coco import load_coco_mini
from xmodal.datasets.dataset import IMAGE_EXTENSIONS, CrossModalDataset
from xmodal.datasets.folder import load_folder, write_folder
from xmodal.datasets.pascal import load_pascal_dscmr
from xmodal.datasets.wikipedia import load_wikipedia
from xmodal.errors import ConfigError, DataError

__all__ = ["CrossModalDataset", "IMAGE_EXTENSIONS", "DATASETS", "DEFAULT_DATA_ROOT", "load",
           "load_data", "default_data_path", "load_coco_mini", "load_folder", "write_folder", "load_pascal_dscmr",
           "load_wikipedia"]

# -- data -------------------------------------------------------------------------------------

def load_data(path, captions: str = "first"):
    """A COCO-mini folder (``pairs.json``) or the generic folder format; DataError otherwise."""

    if path in (None, ""):
        raise DataError("no data folder: pass --data PATH (a folder with images/ and texts.jsonl, "
                        "or a COCO-mini folder with pairs.json)")
    # absolute: the image paths end up in the workspace, read by a backend and workers that may
    # run in another folder than the `project create` that wrote them
    root = Path(path).expanduser().resolve()
    if not root.exists():
        raise DataError(f"--data {path}: no such folder. Pass a folder in the generic format "
                        "(images/ + texts.jsonl, see `xmodal project create --help`) or a COCO-mini "
                        "folder (pairs.json)")
    if not root.is_dir():
        raise DataError(f"--data {path} is a file, not a folder")
    if (root / "pairs.json").is_file() and not (root / "texts.jsonl").is_file() \
            and not (root / "texts.csv").is_file():
        ds = load_coco_mini(root, captions=captions)
        fmt = "coco-mini"
    else:
        ds = load_folder(root)
        fmt = "folder"
    if ds.image_paths is None or ds.texts is None:
        raise DataError(f"--data {path}: raw images and texts are needed to embed")
    return ds, fmt

#: default location of the shared real data sets, relative to this repository
DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data"

DATASETS = ("wikipedia", "coco-mini", "pascal-dscmr", "folder")


# -- helpers ----------------------------------------------------------------------------------

def default_data_path(dataset: str) -> Path:
    """Where the shared copy of a named data set lives (may not exist)."""
    sub = {"wikipedia": "wikipedia_rasiwasia", "coco-mini": "coco_mini",
           "pascal-dscmr": "pascal_sentences"}.get(dataset)
    if sub is None:
        raise DataError(f"no default location for data set {dataset!r}; pass --data PATH")
    return DEFAULT_DATA_ROOT / sub


def load(dataset: str, path=None, **kwargs) -> CrossModalDataset:
    """Load a data set by name (``wikipedia``, ``coco-mini``, ``pascal-dscmr``, ``folder``)."""
    loaders = {"wikipedia": load_wikipedia, "coco-mini": load_coco_mini,
               "pascal-dscmr": load_pascal_dscmr, "folder": load_folder}
    if dataset not in loaders:
        raise ConfigError(f"unknown data set {dataset!r}; use one of {', '.join(loaders)}")
    if path is None:
        if dataset == "folder":
            raise DataError("the folder data set needs --data PATH")
        path = default_data_path(dataset)
    return loaders[dataset](path, **kwargs)
