"""Arrays that depend on a workspace's features only, kept beside them between rebuilds.

What no label changes is computed once per features file and kept in a directory named by a key
of the files it was made of (:func:`xmodal.fileio.file_key`: a file written anew has a new key):
the class bridge's centred space (:func:`xmodal.index.build.bridge_space`) and the self-trained
map's image space (:func:`xmodal.index.build.map_space`). A ``.npy`` file per array,
memory-mapped when read: a ``.npz`` cost 0.02 s of a 100k one-pair update in zip checksums and
copies. A directory appears whole or not at all (written under a temporary name, then renamed);
a racing rebuild keeps the one already there, a torn one is replaced, and the directories of
other features (and what a crash left half-written an hour ago) are deleted.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from xmodal.logfmt import kv

log = logging.getLogger(__name__)

#: a half-written directory (``.new-*``) older than this is what a crash left: deleted
STALE_S = 3600


def key_dir(parent: Path, key: str) -> Path:
    """The directory of ``key`` (the sources' file keys and settings) under ``parent``."""
    return Path(parent) / hashlib.sha256(key.encode()).hexdigest()[:24]


def read_arrays(here: Path, names) -> dict | None:
    """``{name: memory-mapped array}`` of ``here/<name>.npy``; None when one is missing or torn."""
    try:
        return {name: np.load(here / f"{name}.npy", mmap_mode="r", allow_pickle=False) for name in names}
    except (OSError, ValueError):
        return None


def keep_arrays(here: Path, arrays: dict) -> None:
    """Write ``arrays`` as ``here/<name>.npy``, whole or not at all, and delete the other
    directories beside it (best effort: what is not kept is computed again next time)."""
    parent = here.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".new-", dir=parent))
        for name, a in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(a), allow_pickle=False)
        try:
            os.rename(tmp, here)
        except OSError:   # one is there: a racing rebuild's (kept), or a torn one (replaced)
            if read_arrays(here, arrays) is None:
                shutil.rmtree(here, ignore_errors=True)
                with contextlib.suppress(OSError):
                    os.rename(tmp, here)
            shutil.rmtree(tmp, ignore_errors=True)
        for other in parent.iterdir():
            # a reader that has another one open keeps its mapping
            if other != here and (not other.name.startswith(".new-") or time.time() - other.stat().st_mtime > STALE_S):
                shutil.rmtree(other, ignore_errors=True)
    except OSError as exc:
        log.warning(kv("rebuild.arrays_not_kept", path=str(here), error=str(exc)))
