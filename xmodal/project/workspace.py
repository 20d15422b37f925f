"""On-disk state of one project: ``$MODEL_DIR/<project>/``.

Layout::

    config.json              select modality, encoders, measure, Label Studio link (see DEFAULT_CONFIG)
    items.json               image_ids, image_paths, text_ids, texts (row order of the features)
    features/image.npy       float32 (n_images, d_image), rows aligned with image_ids
    features/image.json      {"encoder_id", "shape", "items"}: what produced the matrix
    features/text.npy        float32 (n_texts, d_text)
    features/text.json
    text_encoder.npz         fitted text-encoder state (SIFEncoder.save: word counts, component u)
    selection.json           medoid ids in anytime order + cluster label of every selected-modality item
    index/v<N>.npz           versioned retrieval indexes (see xmodal.index.store)

Item ids are stable strings (relative image path, text id). Label Studio tasks carry the id of the
item being labelled in ``data.item_id`` and the candidate ids as choice values. Every write goes to a
temporary file in the same directory and is moved into place with ``os.replace``, so a reader sees
the old file or the new one, never a partial one.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import io
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from xmodal.errors import ConfigError, DataError
from xmodal.fileio import atomic_file, atomic_write_bytes
from xmodal.redis_conn import check_project_name, model_dir

log = logging.getLogger(__name__)

MODALITIES = ("image", "text")

DEFAULT_CONFIG: dict[str, Any] = {
    "name": None,
    # SSM-AL_I clusters the images and asks for their texts ("image"); SSM-AL_T the reverse ("text")
    "select": "image",
    "encoders": {"image": None, "text": None},
    "measure": "pearson",
    "sparse_top_k": None,
    "sparse_power": 1.0,
    # beyond the paper: "zscore" (z-scored SSR columns), "csls" (hubness correction), the default
    # of a new workspace: through the product path (20 labels, docs/results.md) they gained
    # +12.7%/+9.7% Recall@10 on COCO-mini, +42%/+15% and +56%/+10% on the English and Chinese
    # shapes; "bridge" (the image encoder's classes in the text encoder's space, weighted by what
    # the labels support): COCO-mini 20 labels .547/.530 -> .810/.820, the shapes unchanged (w=0).
    # "zscore-medoids" (k-medoids of the z-scored features of the select modality, for the
    # medoids chosen from then on): `product` over 10 seeds up to +11% MAP on Wikipedia and +13%
    # on Pascal-DSCMR, COCO-mini Recall@10 -2.8% to +4.2%; Wikipedia t2i at N=100 -5%, the
    # synthetic shapes -8% at N=20 (docs/results.md, "Medoids of z-scored features").
    # [] (`--enhance none`) = faithful SSM-AL. A config.json written before this default holds
    # its own "enhance" and keeps it.
    # "map" (the self-trained image->text map, xmodal.core.pseudomap) is opt-in: Flickr8k held-out
    # rsum +29% / +17% at N=20 / 100, but 4.7-21 s more per rebuild at 6,000 x 30,000 items
    # (docs/results.md, "The self-trained map"), more than the rest of a rebuild there.
    "enhance": ["zscore-medoids", "zscore", "csls", "bridge"],
    "csls_k": 10,
    "label_studio": {
        "project_id": None,      # Label Studio project id (int) this workspace is linked to
        "url": None,             # Label Studio base URL; $LABEL_STUDIO_URL overrides
        "label_config": None,    # name of the label_config/* template used
        "from_name": None,       # Choices name in the labelling config (default by select modality)
        "to_name": None,
    },
}


# The enhancements beyond the paper a workspace can enable ("enhance" in config.json;
# docs/results.md, "Beyond the paper"): medoids of z-scored features (KMedoidsSelector
# standardize; the selection, not the index), z-scored SSR columns (SSRIndex standardize), CSLS
# (xmodal.core.hubness) and the class bridge (xmodal.core.bridge; weighted by what the labels
# support, 0 where it does not help) and the self-trained map between the feature spaces
# (xmodal.core.pseudomap, fused after the bridge).
ENHANCEMENTS = ("zscore-medoids", "zscore", "csls", "bridge", "map")


def parse_enhance(value: Any) -> list[str]:
    """The enhancement names of ``value`` (a list, or a comma-separated string like
    ``"zscore,csls"``), in canonical order; an unknown name is a :class:`ConfigError`."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    names = {str(x).strip().lower() for x in items if str(x).strip()}
    unknown = sorted(names - set(ENHANCEMENTS))
    if unknown:
        raise ConfigError(f"unknown enhancement {', '.join(map(repr, unknown))}; valid: "
                          f"{', '.join(ENHANCEMENTS)} (comma-separated; 'none' = faithful SSM-AL)")
    return [name for name in ENHANCEMENTS if name in names]


def other(modality: str) -> str:
    if modality not in MODALITIES:
        raise ConfigError(f"unknown modality {modality!r}; use one of {MODALITIES}")
    return "text" if modality == "image" else "image"


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, ensure_ascii=False).encode("utf-8"))


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_file(path) as f:
        np.save(f, array, allow_pickle=False)


def _merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


class Workspace:
    """One project's directory. Cheap to construct; reads are cached by file mtime."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._cache: dict[str, tuple[float, Any]] = {}

    @classmethod
    def for_project(cls, name: str, base: str | os.PathLike | None = None) -> Workspace:
        check_project_name(name)
        return cls((Path(base) if base is not None else model_dir()) / name)

    @property
    def name(self) -> str:
        return self.root.name

    def exists(self) -> bool:
        return (self.root / "config.json").is_file()

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    # -- paths ---------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    @property
    def items_path(self) -> Path:
        return self.root / "items.json"

    def features_path(self, modality: str) -> Path:
        other(modality)
        return self.root / "features" / f"{modality}.npy"

    @property
    def text_encoder_state_path(self) -> Path:
        """Where the fitted text encoder keeps its state (``SIFEncoder.save(path)`` / ``load``)."""
        return self.root / "text_encoder.npz"

    @property
    def bridge_path(self) -> Path:
        return self.root / "features" / "bridge.npz"

    @property
    def bridge_space_path(self) -> Path:
        """The bridge embeddings centred and on their principal basis, a directory per features
        they were made of (``xmodal.index.build.bridge_space``)."""
        return self.root / "features" / "bridge-space"

    @property
    def image_words_path(self) -> Path:
        return self.root / "features" / "image_words.json"

    @property
    def selection_path(self) -> Path:
        return self.root / "selection.json"

    @property
    def index_dir(self) -> Path:
        return self.root / "index"

    # -- cached json reads ---------------------------------------------------------------
    def _read_json(self, path: Path, what: str) -> Any:
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            raise DataError(f"workspace {self.name!r} has no {what} ({path}); "
                            "create the project first (xmodal project create)") from None
        hit = self._cache.get(str(path))
        if hit and hit[0] == mtime:
            return hit[1]
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"workspace {self.name!r}: cannot read {path}: {exc}") from exc
        self._cache[str(path)] = (mtime, obj)
        return obj

    # -- config --------------------------------------------------------------------------
    @property
    def config(self) -> dict:
        return _merge(DEFAULT_CONFIG, self._read_json(self.config_path, "config.json"))

    def save_config(self, config: dict) -> dict:
        cfg = _merge(DEFAULT_CONFIG, config)
        if cfg["select"] not in MODALITIES:
            raise ConfigError(f"select must be one of {MODALITIES}, not {cfg['select']!r}")
        if cfg["measure"] not in ("pearson", "cosine"):
            raise ConfigError(f"measure must be 'pearson' or 'cosine', not {cfg['measure']!r}")
        cfg["enhance"] = parse_enhance(cfg.get("enhance"))
        try:
            if int(cfg.get("csls_k") or 0) < 1:
                raise ValueError
        except (TypeError, ValueError):
            raise ConfigError(f"csls_k must be a positive integer, not {cfg.get('csls_k')!r}") from None
        cfg["name"] = self.name
        cfg.setdefault("created_at", time.time())
        atomic_write_json(self.config_path, cfg)
        return cfg

    def update_config(self, **changes: Any) -> dict:
        current = self.config if self.exists() else {}
        return self.save_config(_merge(current, changes))

    def link_label_studio(self, project_id: int, url: str | None = None) -> dict:
        ls = {"project_id": int(project_id)}
        if url:
            ls["url"] = url
        return self.update_config(label_studio=ls)

    @property
    def select(self) -> str:
        """The modality whose medoids are the Label Studio tasks (the query side of a task)."""
        return self.config["select"]

    # -- items ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def items_lock(self, shared: bool = False):
        """The item set's lock (``.items.lock``, ``flock``): items.json, the feature matrices and
        what is aligned with them (bridge, selection) change together under the exclusive lock
        (:mod:`xmodal.project.items`); a reader that needs them consistent with each other (the
        rebuild) takes it shared, for the milliseconds of its reads."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".items.lock", "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def save_items(self, image_ids, image_paths, text_ids, texts) -> None:
        image_ids, image_paths = [str(x) for x in image_ids], [str(x) for x in image_paths]
        text_ids, texts = [str(x) for x in text_ids], [str(x) for x in texts]
        if len(image_ids) != len(image_paths) or len(text_ids) != len(texts):
            raise DataError("save_items: ids and contents differ in length")
        for what, ids in (("image", image_ids), ("text", text_ids)):
            if len(set(ids)) != len(ids):
                raise DataError(f"save_items: duplicate {what} ids")
        atomic_write_json(self.items_path, {"image_ids": image_ids, "image_paths": image_paths,
                                            "text_ids": text_ids, "texts": texts})
        self._cache.pop(str(self.items_path), None)   # a rewrite within the clock's tick: same mtime

    @property
    def items(self) -> dict:
        return self._read_json(self.items_path, "items.json")

    def ids(self, modality: str) -> list[str]:
        other(modality)
        return self.items[f"{modality}_ids"]

    def contents(self, modality: str) -> list[str]:
        """Image paths or texts, aligned with :meth:`ids`."""
        other(modality)
        return self.items["image_paths" if modality == "image" else "texts"]

    def row_of(self, modality: str) -> dict[str, int]:
        """id -> row of the modality's feature matrix (cached with items.json)."""
        key = f"rows:{modality}"
        items = self.items  # refreshes the cache when items.json changed
        hit = self._cache.get(key)
        if hit and hit[0] is items:
            return hit[1]
        rows = {item_id: i for i, item_id in enumerate(items[f"{modality}_ids"])}
        self._cache[key] = (items, rows)
        return rows

    # -- features ------------------------------------------------------------------------
    def save_features(self, modality: str, features: np.ndarray, encoder_id: str) -> None:
        features = np.ascontiguousarray(features, dtype=np.float32)
        n = len(self.ids(modality))
        if features.ndim != 2 or len(features) != n:
            raise DataError(f"{modality} features have shape {features.shape}; "
                            f"expected ({n}, d) to align with the {n} {modality} ids")
        atomic_save_npy(self.features_path(modality), features)
        atomic_write_json(self.features_path(modality).with_suffix(".json"),
                          {"encoder_id": str(encoder_id), "shape": list(features.shape),
                           "saved_at": time.time()})

    def load_features(self, modality: str, mmap: bool = False) -> np.ndarray:
        path = self.features_path(modality)
        try:
            X = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except FileNotFoundError:
            raise DataError(f"workspace {self.name!r} has no {modality} features ({path}); "
                            "run the embedding step of `xmodal project create`") from None
        except (OSError, ValueError) as exc:
            raise DataError(f"workspace {self.name!r}: {modality} features {path} are unreadable: "
                            f"{exc}") from exc
        n = len(self.ids(modality))
        if X.ndim != 2 or len(X) != n:
            raise DataError(f"workspace {self.name!r}: {modality} features have shape {X.shape} "
                            f"but there are {n} {modality} ids; re-run the embedding step")
        return X if mmap else X.astype(np.float32, copy=False)

    def features_info(self, modality: str) -> dict:
        return self._read_json(self.features_path(modality).with_suffix(".json"),
                               f"{modality} features metadata")

    def save_image_words(self, words: list[str]) -> None:
        """What the image encoder sees in each image, in image-id order
        (``xmodal.encoders.image_words``): the words a text task's filter matches."""
        if len(words) != len(self.ids("image")):
            raise DataError(f"{len(words)} image word lists for {len(self.ids('image'))} images")
        atomic_write_json(self.image_words_path, dict(zip(self.ids("image"), words)))

    def save_bridge(self, image_bridge: np.ndarray, classes: np.ndarray, class_embeddings: np.ndarray) -> None:
        """The class bridge (``xmodal.core.bridge``): each image's embedding in the text encoder's
        space, and the classes (ImageNet indices) and class embeddings it was made of."""
        if len(image_bridge) != len(self.ids("image")):
            raise DataError(f"{len(image_bridge)} bridge rows for {len(self.ids('image'))} images")
        buf = io.BytesIO()
        np.savez(buf, image=np.asarray(image_bridge, np.float32), classes=np.asarray(classes, np.int64),
                 class_embeddings=np.asarray(class_embeddings, np.float32))
        atomic_write_bytes(self.bridge_path, buf.getvalue())

    def bridge(self, image: bool = True) -> dict | None:
        """``{"image", "classes", "class_embeddings"}`` saved by :meth:`save_bridge`, or None (the
        image encoder has no classifier, or the workspace predates the bridge). ``image=False``
        leaves out the images' rows (``"image"`` None; a rebuild whose bridge space is kept,
        ``xmodal.index.build.bridge_space``, needs only the classes: 150 MB less to read at 100k)."""
        try:
            with np.load(self.bridge_path, allow_pickle=False) as z:
                out = {k: z[k] for k in ("classes", "class_embeddings")}
                with z.zip.open("image.npy") as f:   # the rows' count from the header alone
                    major, _ = np.lib.format.read_magic(f)
                    read_header = np.lib.format.read_array_header_1_0 if major == 1 else \
                        np.lib.format.read_array_header_2_0
                    n = read_header(f)[0][0]
                out["image"] = z["image"] if image else None
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, IndexError) as exc:
            log.warning("workspace %s: unreadable %s (%s); no class bridge", self.name, self.bridge_path, exc)
            return None
        return out if n == len(self.ids("image")) else None

    def image_words(self) -> dict[str, str]:
        """``{image id: words}``; empty when the image encoder has no classifier to name them."""
        if not self.image_words_path.is_file():
            return {}
        return self._read_json(self.image_words_path, "image words")

    # -- selection -----------------------------------------------------------------------
    def save_selection(self, medoid_ids, labels=None, modality: str | None = None) -> None:
        """Medoids (item ids, anytime order) and the cluster of every item of ``modality``
        (default: the config's select modality)."""
        modality = modality or self.select
        medoid_ids = [str(x) for x in medoid_ids]
        known = self.row_of(modality)
        missing = [m for m in medoid_ids if m not in known]
        if missing:
            raise DataError(f"save_selection: {len(missing)} medoid ids are not {modality} items, "
                            f"e.g. {missing[:3]}")
        labels = None if labels is None else [int(x) for x in labels]
        if labels is not None and len(labels) != len(known):
            raise DataError(f"save_selection: {len(labels)} labels for {len(known)} {modality} items")
        atomic_write_json(self.selection_path, {"modality": modality, "medoid_ids": medoid_ids,
                                                "labels": labels, "saved_at": time.time()})
        self._cache.pop(str(self.selection_path), None)

    @property
    def selection(self) -> dict | None:
        if not self.selection_path.exists():
            return None
        return self._read_json(self.selection_path, "selection.json")

    def medoid_ids(self) -> list[str]:
        sel = self.selection
        return list(sel["medoid_ids"]) if sel else []


def list_workspaces(base: str | os.PathLike | None = None) -> list[Workspace]:
    base = Path(base) if base is not None else model_dir()
    if not base.is_dir():
        return []
    out = []
    for child in sorted(base.iterdir()):
        if child.name.startswith(".") or not (child / "config.json").is_file():
            continue
        out.append(Workspace(child))
    return out


def find_by_label_studio_id(ls_project_id: int | str,
                            base: str | os.PathLike | None = None) -> Workspace | None:
    """The workspace whose config links it to this Label Studio project (disk scan)."""
    try:
        wanted = int(ls_project_id)
    except (TypeError, ValueError):
        return None
    for ws in list_workspaces(base):
        try:
            pid = ws.config["label_studio"].get("project_id")
        except DataError:
            continue
        if pid is not None and int(pid) == wanted:
            return ws
    return None
