"""Frozen pretrained encoders, one per modality (the paper's "abstraction", part 1).

Pick one by name::

    from xmodal.encoders import get_image_encoder, get_text_encoder

    images = get_image_encoder("efficientnet-lite0")           # 1280-d, ONNX Runtime on CPU
    X = images.fit_transform(paths)                            # NaN rows: see images.failures_
    texts = get_text_encoder("sif").fit(captions)              # eq. 6-7, u fitted on captions
    name, why = resolve_text_encoder("auto", captions)         # "minilm", "texts in en (100% ...)"
    Y = texts.transform(captions)
    texts.save("sif.npz")                                      # SIFEncoder.load: same u later

    from xmodal.encoders.cache import FeatureCache, embed_with_cache

    Y, failures = embed_with_cache(texts, captions, FeatureCache(), fit=True)  # misses only

Image names: ``efficientnet-lite0`` (default), ``torchvision:<arch>`` (needs
``weights=<local .pth>``). Text names: ``auto`` (default: ``minilm`` for English texts, ``e5`` for
any other language, chosen from the texts by :func:`xmodal.encoders.language.resolve_text_encoder`),
``minilm`` (all-MiniLM-L6-v2 on ONNX Runtime, no PyTorch), ``e5`` (multilingual-e5-small, 4-bit,
no PyTorch), ``sif`` (GloVe 6B 50-d + wordfreq, the paper's), ``sif:<word-vector file>``,
``sif-self`` (Word2Vec trained on your texts; any language).
Options are the encoder class's keyword arguments. Every encoder has ``fit``, ``transform``,
``fit_transform``, ``dim``, ``encoder_id`` and ``failures_``; :mod:`xmodal.encoders.cache` adds an
on-disk feature cache. Heavy libraries load only when an encoder is built.
"""

from __future__ import annotations

import importlib
import inspect

from xmodal.encoders.base import Encoder, NotFittedError, default_cache_dir, valid_rows
from xmodal.errors import ConfigError

# the defaults of `project create`, `demo`, `simulate` and `eval` alike (docs/results.md,
# "Text encoders", has the measurements behind them)
DEFAULT_IMAGE_ENCODER = "efficientnet-lite0"
DEFAULT_TEXT_ENCODER = "auto"
IMAGE_ENCODERS = ("efficientnet-lite0", "torchvision:<arch>", "py:<module>:<factory>")
TEXT_ENCODERS = ("auto", "minilm", "e5", "sif", "sif:<word-vector file>", "sif-self", "py:<module>:<factory>")
TEXT_ENCODER_HELP = ("auto (default: minilm for English texts, e5 for any other language), minilm, "
                     "e5 (multilingual), sif (GloVe, the paper's), sif:<vector file>, sif-self, "
                     "py:<module>:<factory> (your own; xmodal/encoders/external.py)")

# classes and helpers importable from here, each loaded on first use (PEP 562)
_LAZY = {
    "EfficientNetLite0Encoder": "xmodal.encoders.image",
    "TorchvisionEncoder": "xmodal.encoders.image",
    "SIFEncoder": "xmodal.encoders.sif",
    "MiniLMEncoder": "xmodal.encoders.minilm",
    "E5Encoder": "xmodal.encoders.e5",
    "FeatureCache": "xmodal.encoders.cache",
    "resolve_text_encoder": "xmodal.encoders.language",
    "embed_with_cache": "xmodal.encoders.cache",
}

__all__ = [
    "DEFAULT_IMAGE_ENCODER",
    "DEFAULT_TEXT_ENCODER",
    "Encoder",
    "IMAGE_ENCODERS",
    "NotFittedError",
    "TEXT_ENCODERS",
    "TEXT_ENCODER_HELP",
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
    if name is None or (modality == "text" and name == "auto"):
        return
    _builder(modality, name)


def get_image_encoder(name: str = DEFAULT_IMAGE_ENCODER, **options) -> Encoder:
    """An image encoder by name; ``options`` go to its constructor (image_size, batch_size,
    backend="onnx"|"torch", cache_dir, num_threads, progress; weights for torchvision)."""
    return _builder("image", name)(options)


def get_text_encoder(name: str, **options) -> Encoder:
    """A text encoder by name; ``options`` go to its constructor (see :class:`SIFEncoder`,
    :class:`MiniLMEncoder` and :class:`E5Encoder`). ``auto`` is chosen from texts first:
    :func:`resolve_text_encoder`."""
    if name == "auto":
        raise ConfigError("the text encoder 'auto' is chosen from the texts: resolve it with "
                          "xmodal.encoders.resolve_text_encoder(name, texts) first")
    return _builder("text", name)(options)


def _builder(modality: str, name: str):
    """The one place that knows the encoder names: ``name`` parsed into a function of the
    options that builds the encoder (its module is imported only then); ConfigError if unknown."""
    if name.startswith("py:") and modality in ("image", "text"):
        from xmodal.encoders.external import parse_entry_point

        parse_entry_point(name)
        return lambda options: _external(name, modality, options)
    if modality == "image":
        arch = name.partition(":")[2] if name.startswith("torchvision:") else ""
        if name == "efficientnet-lite0":
            return lambda options: _build(_class("image", "EfficientNetLite0Encoder"), name, options)
        if arch:
            return lambda options: _build(_class("image", "TorchvisionEncoder"), name, options, arch)
        raise ConfigError(f"unknown image encoder {name!r}; valid: {', '.join(IMAGE_ENCODERS)}")
    if modality == "text":
        if name == "minilm":
            return lambda options: _build(_class("minilm", "MiniLMEncoder"), name, options)
        if name == "e5":
            return lambda options: _build(_class("e5", "E5Encoder"), name, options)
        if name in ("sif", "sif-self") or (name.startswith("sif:") and name[4:]):
            def sif(options):
                from xmodal.encoders.sif import GLOVE, SELF, SIFEncoder

                return _build(SIFEncoder, name, options, {"sif": GLOVE, "sif-self": SELF}.get(name, name[4:]))
            return sif
        raise ConfigError(f"unknown text encoder {name!r}; valid: {', '.join(TEXT_ENCODERS)}")
    raise ConfigError(f"unknown modality {modality!r}; valid: image, text")


def _class(module: str, cls: str):
    return getattr(importlib.import_module(f"xmodal.encoders.{module}"), cls)


def get_encoder(modality: str, name: str | None = None, **options) -> Encoder:
    """``get_image_encoder`` or ``get_text_encoder`` by modality ("image" or "text")."""
    if modality == "image":
        return get_image_encoder(name or DEFAULT_IMAGE_ENCODER, **options)
    if modality == "text":
        if not name:
            raise ConfigError("a text encoder needs a name (see resolve_text_encoder for auto)")
        return get_text_encoder(name, **options)
    raise ConfigError(f"unknown modality {modality!r}; valid: image, text")


def _external(name: str, modality: str, options: dict) -> Encoder:
    """A team's encoder by entry point; of the options only ``progress`` applies to it."""
    from xmodal.encoders.external import ExternalEncoder

    return ExternalEncoder(name, modality, progress=bool(options.get("progress", True)))


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
