"""Frozen pretrained encoders, one per modality (the paper's "abstraction", part 1).

Pick one by name::

    from xmodal.encoders import get_image_encoder, get_text_encoder

    images = get_image_encoder("efficientnet-lite0")           # 1280-d, ONNX Runtime on CPU
    X = images.fit_transform(paths)                            # NaN rows: see images.failures_
    texts = get_text_encoder("sif").fit(captions)              # eq. 6-7, u fitted on captions
    Y = texts.transform(captions)
    texts.save("sif.npz")                                      # SIFEncoder.load: same u later

    from xmodal.encoders.cache import FeatureCache, embed_with_cache

    Y, failures = embed_with_cache(texts, captions, FeatureCache(), fit=True)  # misses only

Image names: ``efficientnet-lite0`` (default), ``torchvision:<arch>`` (needs
``weights=<local .pth>``). Text names: ``sif`` (default; GloVe 6B 50-d + wordfreq),
``sif:<word-vector file>``, ``sif-self`` (Word2Vec trained on your texts), ``minilm``.
Options are the encoder class's keyword arguments. Every encoder has ``fit``, ``transform``,
``fit_transform``, ``dim``, ``encoder_id`` and ``failures_``; :mod:`xmodal.encoders.cache` adds an
on-disk feature cache. Heavy libraries load only when an encoder is built.
"""

from __future__ import annotations

import importlib
import inspect

from xmodal.encoders.base import Encoder, NotFittedError, default_cache_dir, valid_rows
from xmodal.errors import ConfigError

DEFAULT_IMAGE_ENCODER = "efficientnet-lite0"
DEFAULT_TEXT_ENCODER = "sif"
IMAGE_ENCODERS = ("efficientnet-lite0", "torchvision:<arch>")
TEXT_ENCODERS = ("sif", "sif:<word-vector file>", "sif-self", "minilm")

# classes and helpers importable from here, each loaded on first use (PEP 562)
_LAZY = {
    "EfficientNetLite0Encoder": "xmodal.encoders.image",
    "TorchvisionEncoder": "xmodal.encoders.image",
    "SIFEncoder": "xmodal.encoders.sif",
    "MiniLMEncoder": "xmodal.encoders.minilm",
    "FeatureCache": "xmodal.encoders.cache",
    "embed_with_cache": "xmodal.encoders.cache",
}

__all__ = [
    "DEFAULT_IMAGE_ENCODER",
    "DEFAULT_TEXT_ENCODER",
    "Encoder",
    "IMAGE_ENCODERS",
    "NotFittedError",
    "TEXT_ENCODERS",
    "check_encoder_name",
    "default_cache_dir",
    "get_encoder",
    "get_image_encoder",
    "get_text_encoder",
    "valid_rows",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_encoder_name(modality: str, name: str | None) -> None:
    """Raise ConfigError for an encoder name ``get_encoder`` would refuse, without loading anything:
    commands call it on their arguments before they start Redis or embed a single item."""
    if name is None:
        return
    if modality == "image":
        if name == "efficientnet-lite0" or (name.startswith("torchvision:") and name.partition(":")[2]):
            return
        raise ConfigError(f"unknown image encoder {name!r}; valid: {', '.join(IMAGE_ENCODERS)}")
    if modality == "text":
        if name in ("minilm", "sif", "sif-self") or (name.startswith("sif:") and name[4:]):
            return
        raise ConfigError(f"unknown text encoder {name!r}; valid: {', '.join(TEXT_ENCODERS)}")
    raise ConfigError(f"unknown modality {modality!r}; valid: image, text")


def get_image_encoder(name: str = DEFAULT_IMAGE_ENCODER, **options) -> Encoder:
    """An image encoder by name; ``options`` go to its constructor (image_size, batch_size,
    backend="onnx"|"torch", cache_dir, num_threads, progress; weights for torchvision)."""
    from xmodal.encoders import image

    if name == "efficientnet-lite0":
        return _build(image.EfficientNetLite0Encoder, name, options)
    if name.startswith("torchvision:") and name.partition(":")[2]:
        return _build(image.TorchvisionEncoder, name, options, name.partition(":")[2])
    raise ConfigError(f"unknown image encoder {name!r}; valid: {', '.join(IMAGE_ENCODERS)}")


def get_text_encoder(name: str = DEFAULT_TEXT_ENCODER, **options) -> Encoder:
    """A text encoder by name; ``options`` go to its constructor (see :class:`SIFEncoder` and
    :class:`MiniLMEncoder`)."""
    if name == "minilm":
        from xmodal.encoders.minilm import MiniLMEncoder

        return _build(MiniLMEncoder, name, options)
    if name == "sif" or name == "sif-self" or (name.startswith("sif:") and name[4:]):
        from xmodal.encoders.sif import GLOVE, SELF, SIFEncoder

        vectors = {"sif": GLOVE, "sif-self": SELF}.get(name, name[4:])
        return _build(SIFEncoder, name, options, vectors)
    raise ConfigError(f"unknown text encoder {name!r}; valid: {', '.join(TEXT_ENCODERS)}")


def get_encoder(modality: str, name: str | None = None, **options) -> Encoder:
    """``get_image_encoder`` or ``get_text_encoder`` by modality ("image" or "text")."""
    if modality == "image":
        return get_image_encoder(name or DEFAULT_IMAGE_ENCODER, **options)
    if modality == "text":
        return get_text_encoder(name or DEFAULT_TEXT_ENCODER, **options)
    raise ConfigError(f"unknown modality {modality!r}; valid: image, text")


def _build(cls, name: str, options: dict, *args) -> Encoder:
    """``cls(*args, **options)``, with an unknown option reported as a ConfigError."""
    params = inspect.signature(cls.__init__).parameters
    accepted = {p for p, spec in params.items() if spec.kind is inspect.Parameter.KEYWORD_ONLY}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} for encoder {name!r}; "
            f"valid: {', '.join(sorted(accepted))}"
        )
    return cls(*args, **options)
