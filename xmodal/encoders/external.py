"""A team's own encoder, named by a Python entry point: ``py:<module>:<factory>``.

``factory()`` (called once per process, with no arguments) returns an object with
``transform(items) -> (n, dim)`` array-like (items: texts, or image file paths), ready to use:
the backend and the workers build their own with the same call, so any state it needs comes from
the factory (a file it reads), not from a fit on the project's items. It is used
everywhere a built-in encoder is: ``project create``, ``eval``, ``demo``, the feature cache,
``/search`` and the written references of the rebuild (the backend and the workers import the
module, so it must be importable there: installed, or on ``PYTHONPATH``). Precomputed features
are the same thing: a factory whose ``transform`` looks the items up in the team's own file.

    # my_team/encoders.py
    class Lookup:
        def __init__(self):
            self.table = dict(zip(json.load(open("ids.json")), np.load("features.npy")))
        def transform(self, items):
            return np.stack([self.table[i] for i in items])

    def lookup():
        return Lookup()

    xmodal project create --data my_data --name p --text-encoder py:my_team.encoders:lookup

Rows that come back non-finite or all zero count as failures (``failures_``), as for the
built-in encoders. The cache id is the entry point plus its package's version, so a new release
of the team's package re-embeds; bump the version when the encoder's output changes.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

import numpy as np

from xmodal.encoders.base import Encoder
from xmodal.errors import ConfigError, DataError

PREFIX = "py:"


def parse_entry_point(name: str) -> tuple[str, str]:
    """``py:pkg.module:factory`` -> (``pkg.module``, ``factory``); ConfigError if malformed."""
    module, sep, attr = name[len(PREFIX):].partition(":")
    if not name.startswith(PREFIX) or not sep or not module or not attr.isidentifier():
        raise ConfigError(f"an encoder entry point is py:<module>:<factory>, e.g. "
                          f"py:my_team.encoders:text_encoder (got {name!r})")
    return module, attr


class ExternalEncoder(Encoder):
    """Adapter from a team's object (``transform``, optional ``dim``) to :class:`Encoder`."""

    def __init__(self, name: str, modality: str, *, progress: bool = True) -> None:
        super().__init__(progress=progress)
        self.name, self.modality = name, modality
        self.module, self.attr = parse_entry_point(name)
        self._impl = None
        self._dim: int | None = None

    def _object(self):
        if self._impl is None:
            try:
                factory = getattr(importlib.import_module(self.module), self.attr)
            except (ImportError, AttributeError) as exc:
                raise ConfigError(f"encoder {self.name}: cannot load {self.module}.{self.attr} "
                                  f"({type(exc).__name__}: {exc})") from None
            impl = factory()
            if not callable(getattr(impl, "transform", None)):
                raise ConfigError(f"encoder {self.name}: {self.module}.{self.attr}() returned "
                                  f"{type(impl).__name__}, which has no transform(items)")
            self._impl = impl
        return self._impl

    @property
    def dim(self) -> int:
        if self._dim is None:
            declared = getattr(self._object(), "dim", None)
            if declared is None:
                raise DataError(f"encoder {self.name}: dim is known after the first transform")
            self._dim = int(declared)
        return self._dim

    @property
    def cache_id(self) -> str:
        top = self.module.split(".")[0]
        try:
            release = version(top)
        except PackageNotFoundError:
            release = "unversioned"
        return f"{self.name}@{top}=={release}"

    def features(self, items: Sequence[str]) -> np.ndarray:
        items = list(items)
        if not items:
            return np.zeros((0, self._dim or 0), dtype=np.float32)
        F = np.asarray(self._object().transform(items), dtype=np.float32)
        if F.ndim != 2 or len(F) != len(items):
            raise DataError(f"encoder {self.name}: transform of {len(items)} items returned shape "
                            f"{F.shape}, not ({len(items)}, dim)")
        self._dim = F.shape[1]
        bad = ~np.isfinite(F).all(axis=1) | ~(F != 0).any(axis=1)
        self.failures_ = [(str(items[i]), "the team's encoder returned no usable vector")
                          for i in np.flatnonzero(bad)]
        F[bad] = np.nan if self.modality == "image" else 0.0
        return F
