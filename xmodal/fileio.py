"""Files that appear whole or not at all, for every layer (the workspace, the index, the
encoders' caches): written to a temporary file in the same folder, fsynced, then moved into place
with ``os.replace`` (atomic on POSIX), so a reader sees the old file or the new one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def file_key(path: Path) -> str:
    """Which file is at ``path`` (device, inode, mtime, size), as a name part: a file written anew
    by :func:`atomic_file` has a new key, so what is computed from it can be kept under its key."""
    st = os.stat(path)
    return f"{st.st_dev:x}-{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"


@contextlib.contextmanager
def atomic_file(path: Path):
    """A binary file that appears at ``path`` whole or not at all (see the module doc)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_file(path) as f:
        f.write(data)
