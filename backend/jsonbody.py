"""Request bodies -> a JSON object, or a 4xx that says what was wrong with them.

Python's ``json`` accepts more than the routes can use: ``Infinity``/``NaN`` (and ``1e999``, which
becomes infinity), integers of any length, lone surrogates (``"\\ud800"``, which no UTF-8 file
name, Redis key or log line can hold) and nesting as deep as the interpreter's stack (a
``RecursionError``). Each of those failed somewhere deep inside a route as a 500; here each is a
400 before any route sees the body. A body sent in chunks (no ``Content-Length``) is held to the
same size limit as one with a length: 413, not a truncated body that then fails to parse. A body
that does not arrive whole within ``$XMODAL_BODY_TIMEOUT_S`` is the worker's 408 (slow clients,
:mod:`backend.gunicorn_worker`).
"""

from __future__ import annotations

import json
import math
import re

from flask import Request
from werkzeug.exceptions import RequestEntityTooLarge

from xmodal import settings
from xmodal.errors import ApiError

MAX_DEPTH = 64          # Label Studio's bodies nest about 8 deep
MAX_INT_DIGITS = 19     # every id and epoch Label Studio sends fits in 64 bits
_SURROGATE = re.compile("[\ud800-\udfff]")


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ApiError(400, f"the body holds an integer of {len(text.lstrip('-'))} digits; ids and "
                            f"timestamps have at most {MAX_INT_DIGITS}")
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ApiError(400, f"the body holds a number too large to be finite ({text[:20]}...)")
    return value


def _constant(name: str):
    raise ApiError(400, f"the body holds {name}, which is not a JSON number")


def _check(value) -> None:
    """Depth and strings, without recursion (the structure may be deep)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            if _SURROGATE.search(node):
                raise ApiError(400, "the body holds a string with a lone surrogate (like \\ud800), "
                                    "which is not valid Unicode")
            continue
        if not isinstance(node, (dict, list)):
            continue
        if depth > MAX_DEPTH:
            raise ApiError(400, f"the body is nested more than {MAX_DEPTH} levels deep")
        if isinstance(node, dict):
            stack.extend((k, depth) for k in node)
            stack.extend((v, depth + 1) for v in node.values())
        else:
            stack.extend((v, depth + 1) for v in node)


def loads(data: bytes | str):
    """``json.loads`` with the checks of the module doc; ApiError(400) for anything refused."""
    try:
        value = json.loads(data, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except RecursionError:
        raise ApiError(400, f"the body is nested more than {MAX_DEPTH} levels deep") from None
    except ValueError:   # UnicodeDecodeError included
        raise ApiError(400, "the request body must be a JSON object (it is not valid JSON)") from None
    _check(value)
    return value


DEFAULT_MAX_CONTENT_LENGTH = 32 * 1024 * 1024


def max_content_length() -> int:
    """``$XMODAL_MAX_CONTENT_LENGTH`` (bytes, default 32 MiB): the largest request body."""
    return settings.get("XMODAL_MAX_CONTENT_LENGTH")


def too_large_message(limit: int) -> str:
    """The 413's error, from the app or from the worker that buffers the body."""
    return f"the request body is larger than the limit of {limit} bytes (XMODAL_MAX_CONTENT_LENGTH)"


def body_bytes(request: Request) -> bytes:
    """The raw body: 413 when a chunked one exceeds the limit (werkzeug stops reading at the limit
    and returns what it read, which then fails to parse as a confusing 400). Under ``xmodal
    serve`` the body is whole before the app runs (the worker buffers it, within a deadline:
    :mod:`backend.gunicorn_worker`), so reading it never waits for a client."""
    data = request.get_data(cache=True)
    limit = request.max_content_length
    if request.content_length is None and limit is not None and len(data) >= limit:
        stream = request.environ.get("wsgi.input")
        if stream is not None and stream.read(1):
            raise RequestEntityTooLarge()
    return data


def json_object(request: Request) -> dict:
    """The request's body as a JSON object (whatever its Content-Type), else ApiError(400)."""
    body = loads(body_bytes(request) or b"null")
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body
