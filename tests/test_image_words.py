"""Words for images from the image encoder's own ImageNet classifier (xmodal.encoders.image_words):
what a text task's filter matches under each thumbnail."""

from __future__ import annotations

import numpy as np
import pytest

from xmodal.encoders.image_words import GROUPS, _classifier, image_words, imagenet_classes

ENCODER_ID = "efficientnet-lite0|weights=x|size=224|prep=v1|backend=onnx"


def _features_seeing(classes):
    """Feature rows whose top class is each of ``classes`` (solved through the real classifier)."""
    W, b = _classifier("efficientnet-lite0")
    target = np.zeros((len(classes), len(b)), np.float32)
    target[np.arange(len(classes)), classes] = 20.0
    return np.linalg.lstsq(W, (target - b).T, rcond=None)[0].T.astype(np.float32)


def test_group_ranges_name_the_classes_they_say():
    names = imagenet_classes()

    ends = {"dog puppy": ("Chihuahua", "Mexican hairless"), "cat kitten": ("tabby", "cheetah"),
            "monkey": ("orangutan", "squirrel monkey"), "fruit": ("Granny Smith", "pomegranate")}
    for words, (first, last) in ends.items():
        lo, hi = GROUPS[words][0][0], GROUPS[words][-1][1]
        assert (names[lo], names[hi]) == (first, last), words
    for words, ranges in GROUPS.items():
        assert all(0 <= lo <= hi < len(names) for lo, hi in ranges), words
    assert names[404] == "airliner" and 404 in range(GROUPS["plane airplane"][0][0], 405)


def test_an_image_gets_its_class_names_and_their_everyday_words_first():
    words = image_words(_features_seeing([207, 963]), ENCODER_ID)
    assert words[0].startswith("golden retriever dog puppy")
    assert words[1].startswith("pizza food")
    assert all(len(w.split()) == len(set(w.split())) for w in words)   # no word twice


def test_no_words_without_a_known_classifier_and_none_for_broken_rows():
    X = _features_seeing([207])
    assert image_words(X, "torchvision:resnet50|weights=y") is None
    assert image_words(X[:, :100], ENCODER_ID) is None          # not this classifier's input
    X[0, 3] = np.nan                                             # an image that could not be read
    assert image_words(X, ENCODER_ID) == [""]


def test_coco_images_are_named_by_what_is_in_them():
    """On real photos: the pizza images of COCO-mini have 'pizza' among their words."""
    import json

    from xmodal.datasets import DEFAULT_DATA_ROOT
    from xmodal.encoders import get_image_encoder

    coco_mini_path = DEFAULT_DATA_ROOT / "coco_mini"
    if not coco_mini_path.is_dir():
        pytest.skip(f"real data not found at {coco_mini_path} (../shared/data; see its README)")
    entries = json.loads((coco_mini_path / "pairs.json").read_text())
    pizza = [e for e in entries if "pizza" in e["categories"]][:4]
    if not pizza:
        pytest.skip("no pizza image in this COCO-mini")
    enc = get_image_encoder("efficientnet-lite0", progress=False)
    X = enc.features([str(coco_mini_path / e["file"]) for e in pizza])
    words = image_words(X, enc.encoder_id)
    assert sum("pizza" in w for w in words) >= len(pizza) // 2, words


def test_text_task_thumbnails_carry_the_words_the_filter_matches(make_workspace):
    from xmodal.labelstudio.tasks import task_options
    from xmodal.simulation.annotator import page_filter

    ws = make_workspace("words", n=6, n_medoids=3, select="text")
    ws.save_image_words(["pizza food", "", "dog puppy", "bus", "", "dog puppy beagle"])
    options = task_options(ws, ws.ids("image"), lambda image_id, side: f"/img/{image_id}")
    assert [o["alias"] for o in page_filter(options, "dog")] == [ws.ids("image")[2], ws.ids("image")[5]]
    assert "<span class='xm-words'>pizza food</span>" in options[0]["html"]
    assert "xm-words" not in options[1]["html"] and options[1]["value"] == ws.ids("image")[1]
    assert "loading='lazy'" in options[0]["html"]
    with pytest.raises(Exception, match="6 images"):
        ws.save_image_words(["one"])


def test_the_classifier_and_its_names_need_no_torch():
    """Importing torch and torchvision for a 5 MB head and 1000 names cost a warm project create
    most of its time (4.2 s -> 1.4 s on COCO-mini) and the backend placing a new image as much;
    now the names are a file of the project and the head is read from the weights file directly."""
    import subprocess
    import sys

    code = ("import sys; from xmodal.encoders.image_words import _classifier, imagenet_classes; "
            "w, b = _classifier('efficientnet-lite0'); names = imagenet_classes(); "
            "print(w.shape, w.dtype, b.shape, len(names), names[207], 'torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "(1000, 1280) float32 (1000,) 1000 golden retriever False"
    w, _ = _classifier("efficientnet-lite0")
    assert np.isfinite(w).all()


def test_the_class_names_are_torchvisions():
    torchvision = pytest.importorskip("torchvision", reason="torchvision not installed: nothing to compare")
    expected = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]
    assert imagenet_classes() == list(expected)
