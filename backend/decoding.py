"""Where a web worker decodes query images: ``$XMODAL_DECODE_SLOTS`` threads of its own
(default 1), whatever the number of request threads.

A query image (``/search {"image": ...}``) is decoded whole before it is resized: a 49-megapixel
PNG, under the 50 MP limit, takes ~150 MB as RGB and about three times that while it is converted
and embedded. Each web worker serves 64 request threads, and nothing bounded how many decoded at
once: four concurrent 49 MP PNGs took one worker from 1.28 to 3.0 GiB (an adversarial run).

So a request hands its decode to a small pool of decode threads of its process and waits for the
result, at most ``$XMODAL_DECODE_WAIT_S`` (default 30) counted from when it asked: then it is a
503 that says to retry, and a decode that had not started is dropped. A pool rather than a
semaphore around the request threads: glibc gives each thread its own malloc arena, and Pillow
allocates an image in 16 MB blocks that stay in the arena of the thread that freed them, so four
decodes on four request threads, even one after the other, left four arenas of ~400 MB each. On
the pool's threads the same memory is reused. Everything else (labels, /predict, text search)
never waits for the pool.
"""

from __future__ import annotations

import concurrent.futures
import threading

from xmodal import settings
from xmodal.errors import ApiError

_pool: concurrent.futures.ThreadPoolExecutor | None = None
_lock = threading.Lock()


def decode_slots() -> int:
    """``$XMODAL_DECODE_SLOTS`` (default 1): query images one process decodes at once."""
    return settings.get("XMODAL_DECODE_SLOTS")


def decode_wait_s() -> float:
    """``$XMODAL_DECODE_WAIT_S`` (default 30): the longest a request waits for its decode."""
    return settings.get("XMODAL_DECODE_WAIT_S")


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:   # per process: created after gunicorn forked the worker
            _pool = concurrent.futures.ThreadPoolExecutor(decode_slots(), thread_name_prefix="decode")
        return _pool


def decode(fn, *args):
    """``fn(*args)`` on a decode thread (see the module doc); ApiError(503) after the wait."""
    future = _executor().submit(fn, *args)
    try:
        return future.result(timeout=decode_wait_s())
    except concurrent.futures.TimeoutError:
        future.cancel()   # not started yet: never decoded; started: its result is dropped
        raise ApiError(503, f"the backend is decoding other query images ({decode_slots()} at a "
                            "time); retry in a few seconds (XMODAL_DECODE_SLOTS)") from None
