"""Read a PyTorch weights file (``torch.save`` of a state dict) into numpy arrays, without PyTorch.

Why: the default image encoder's weights ship as a ``.pth`` file, and installing PyTorch (~1 GB)
to read 18 MB of numbers is most of what a plain install of the project would download. The
network itself runs on ONNX Runtime (:mod:`xmodal.encoders.efficientnet_onnx`).

Both of PyTorch's file formats are read:

- legacy (PyTorch < 1.6, or ``_use_new_zipfile_serialization=False``; the EfficientNet-Lite0
  file): pickles in a row (magic number, protocol version 1001, system info, the object with
  persistent ids for its storages, the list of storage keys), then each storage's raw bytes,
  preceded by its element count as an int64;
- zip (PyTorch >= 1.6): ``<dir>/data.pkl`` holds the object, ``<dir>/data/<key>`` each storage's
  bytes and ``<dir>/byteorder`` their byte order.

Safe on an untrusted file, like ``torch.load(weights_only=True)``: the unpickler resolves only the
globals a state dict needs (an ``OrderedDict``, tensor rebuilds, typed storages) to inert stand-ins
of this module, and refuses any other; arrays are built by numpy's own bounds-checked constructor.
A file that is not what it claims raises :class:`~xmodal.errors.DataError`.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import struct
import zipfile
from collections.abc import Collection, Mapping
from typing import NamedTuple

import numpy as np

from xmodal.errors import DataError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# torch.<Name>Storage -> numpy dtype code of its elements ("bf16": numpy has none, it is read as
# raw 16 bits and widened to float32)
_STORAGE_DTYPES = {
    "DoubleStorage": "f8", "FloatStorage": "f4", "HalfStorage": "f2", "BFloat16Storage": "bf16",
    "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?",
}
_REBUILDS = ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_parameter")
_TORCH_GLOBALS = {("torch._utils", n) for n in _REBUILDS} | {("torch", n) for n in _STORAGE_DTYPES}


def load_state_dict(path: str | os.PathLike, names: Collection[str] | None = None) -> dict[str, np.ndarray]:
    """``{name: array}`` of the tensors in the state dict saved at ``path`` (a ``{"state_dict":
    ...}`` wrapper is unwrapped, entries that are not tensors are left out), in file order; only
    ``names`` when given (the others' bytes are not read). Arrays are C-contiguous copies in the
    tensors' own dtype (bfloat16 as float32), whatever the saved strides."""
    path = os.fspath(path)
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path, names)
        with open(path, "rb") as f:
            return _load_legacy(f, path, names)
    except DataError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, OverflowError, struct.error, zipfile.BadZipFile) as exc:
        raise DataError(f"{path} is not a readable PyTorch weights file: {exc}") from exc


# -- the restricted unpickler -------------------------------------------------------------------


class _Global(NamedTuple):
    """An allowed global as the unpickler hands it out: an immutable tuple, so that a hostile
    BUILD opcode cannot alter it (it has no ``__dict__``), and inert until called."""

    module: str
    name: str

    def __call__(self, *args):
        if self.name in _STORAGE_DTYPES:
            raise pickle.UnpicklingError(f"torch.{self.name} is only valid as a persistent id")
        if self.name == "_rebuild_parameter":
            return args[0]                    # (data, requires_grad, backward_hooks): the data
        storage, offset, size, stride = args[:4]
        return _Tensor(storage, offset, tuple(size), tuple(stride))


class _Storage(NamedTuple):
    key: str               # where its bytes are: the storage key in the file
    dtype: str             # numpy dtype code, without byte order
    offset: int            # elements into that storage (legacy storage views), and how many
    numel: int | None


class _Tensor(NamedTuple):
    storage: _Storage
    offset: int
    size: tuple
    stride: tuple


class _Unpickler(pickle.Unpickler):
    """``find_class`` allows only what a state dict is made of; ``persistent_load`` turns a storage
    reference into a :class:`_Storage` whose bytes are read afterwards."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) in _TORCH_GLOBALS:
            return _Global(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a weights file")

    def persistent_load(self, pid):
        # legacy: ('storage', type, root key, location, numel, view or None); zip: the first five
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {str(pid)[:80]}")
        kind, key = pid[1], pid[2]
        if not (isinstance(kind, _Global) and kind.name in _STORAGE_DTYPES and isinstance(key, str)):
            raise pickle.UnpicklingError(f"unexpected storage {str(pid)[:80]}")
        view = pid[5] if len(pid) == 6 else None
        if view is None:
            return _Storage(key, _STORAGE_DTYPES[kind.name], 0, None)
        _, offset, numel = view                # (view key, offset, numel) in the root storage
        return _Storage(key, _STORAGE_DTYPES[kind.name], int(offset), int(numel))


def _tensors(obj) -> dict[str, _Tensor]:
    """The tensors of the unpickled state dict, by name."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise DataError(f"the file holds a {type(obj).__name__}, not a state dict")
    return {k: v for k, v in obj.items() if isinstance(v, _Tensor)}


def _select(tensors: dict[str, _Tensor], names: Collection[str] | None) -> dict[str, _Tensor]:
    if names is None:
        return tensors
    missing = set(names) - set(tensors)
    if missing:
        raise DataError(f"no tensor named {', '.join(sorted(missing))} in the file")
    return {k: t for k, t in tensors.items() if k in names}


def _dtype(code: str, order: str) -> np.dtype:
    return np.dtype(order + ("u2" if code == "bf16" else code))


def _array(t: _Tensor, data: np.ndarray) -> np.ndarray:
    """The tensor's elements out of its storage's, as a contiguous native-order copy; numpy's
    constructor refuses a view reaching outside the buffer."""
    if not (isinstance(t.storage, _Storage) and len(t.size) == len(t.stride)
            and all(isinstance(x, int) and x >= 0 for x in (t.offset, *t.size, *t.stride))
            and t.storage.offset >= 0 and (t.storage.numel or 0) >= 0):
        raise DataError(f"bad tensor geometry {str(t)[:120]}")
    start, numel = t.storage.offset, t.storage.numel
    data = data[start:] if numel is None else data[start:start + numel]
    if math.prod(t.size) > max(len(data), 1):
        # a saved expand(): allowed by torch, but a weights file has no use for one, and a
        # forged one could ask for terabytes
        raise DataError(f"a tensor of {t.size} elements over a storage of {len(data)}")
    item = data.dtype.itemsize
    a = np.ndarray(t.size, data.dtype, buffer=data, offset=t.offset * item,
                   strides=[s * item for s in t.stride]).copy()
    a = a.astype(a.dtype.newbyteorder("="), copy=False)
    if t.storage.dtype == "bf16":
        return (a.astype(np.uint32) << 16).view(np.float32)
    return a


# -- the two formats ----------------------------------------------------------------------------


def _load_legacy(f, path: str, names) -> dict[str, np.ndarray]:
    # every pickle of the file goes through the restricted unpickler, the magic number's included
    try:
        magic = _Unpickler(f).load()
    except Exception as exc:     # whatever garbage makes pickle fail: not this format either
        raise DataError(f"{path} is neither a zip nor a legacy PyTorch file") from exc
    if magic != _LEGACY_MAGIC:
        raise DataError(f"{path} is neither a zip nor a legacy PyTorch file")
    protocol = _Unpickler(f).load()
    if protocol != _LEGACY_PROTOCOL:
        raise DataError(f"{path}: unsupported legacy protocol {protocol!r}")
    info = _Unpickler(f).load()
    order = "<" if not isinstance(info, Mapping) or info.get("little_endian", True) else ">"
    everything = _tensors(_Unpickler(f).load())
    tensors = _select(everything, names)
    keys = _Unpickler(f).load()
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        raise DataError(f"{path}: bad storage key list")
    # every tensor's storage type gives its element size, needed to skip the unwanted ones
    codes = {t.storage.key: t.storage.dtype for t in everything.values()}
    wanted = {t.storage.key for t in tensors.values()}
    size = os.fstat(f.fileno()).st_size
    data: dict[str, np.ndarray] = {}
    for key in keys:            # each storage: int64 element count, then its bytes
        if len(data) == len(wanted):
            break
        if key not in codes:
            raise DataError(f"{path}: storage {key} is used by no tensor")
        (numel,) = struct.unpack(order + "q", f.read(8))
        dtype = _dtype(codes[key], order)
        nbytes = numel * dtype.itemsize
        if numel < 0 or f.tell() + nbytes > size:
            raise DataError(f"{path} is truncated (storage {key})")
        if key in wanted:
            data[key] = np.frombuffer(f.read(nbytes), dtype)
        else:
            f.seek(nbytes, os.SEEK_CUR)
    if len(data) < len(wanted):
        raise DataError(f"{path}: no data for storage(s) {', '.join(sorted(wanted - set(data)))}")
    return {name: _array(t, data[t.storage.key]) for name, t in tensors.items()}


def _load_zip(path: str, names) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as zf:
        pickles = [n for n in zf.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise DataError(f"{path} is a zip file but not a PyTorch one (no <dir>/data.pkl)")
        root = pickles[0][: -len("data.pkl")]
        order = "<"
        if root + "byteorder" in zf.namelist():
            order = "<" if zf.read(root + "byteorder").strip() == b"little" else ">"
        tensors = _select(_tensors(_Unpickler(io.BytesIO(zf.read(pickles[0]))).load()), names)
        data = {}
        for t in tensors.values():
            key = t.storage.key
            if key not in data:
                dtype = _dtype(t.storage.dtype, order)
                raw = zf.read(f"{root}data/{key}")
                data[key] = np.frombuffer(raw, dtype, count=len(raw) // dtype.itemsize)
        return {name: _array(t, data[t.storage.key]) for name, t in tensors.items()}
