"""Response bodies are always JSON: a NaN or an infinity becomes ``null``.

Python's ``json`` writes a non-finite float as ``NaN`` / ``Infinity``, which is not JSON: a client
(Label Studio, ``JSON.parse``, ``jq``) then fails on the whole answer. An index file full of NaN
once made /search answer ``"score": NaN`` (an adversarial run); index files are now checked when
they load (:mod:`xmodal.index.store`), and this is the guarantee at the edge for anything else.
"""

from __future__ import annotations

import math

from flask.json.provider import DefaultJSONProvider


def _finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


class FiniteJSONProvider(DefaultJSONProvider):
    sort_keys = False

    def dumps(self, obj, **kwargs) -> str:
        try:   # the common case costs nothing extra: strict encoding, walked only when it fails
            return super().dumps(obj, allow_nan=False, **kwargs)
        except ValueError as exc:
            if "Out of range float" not in str(exc):
                raise
            return super().dumps(_finite(obj), allow_nan=False, **kwargs)
