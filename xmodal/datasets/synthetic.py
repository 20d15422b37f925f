"""A small, deterministic, labelled image<->text data set for the demo and the tests.

Every image is a rendered scene with one object (a shape of some colour, size and position on a
softly shaded background); every caption names those four attributes through varied templates
and synonyms ("a small red circle in the top left corner", "a tiny crimson disc near the upper
left"...). The images differ exactly in the attributes the captions name, so the captions can be
learned from a handful of matched pairs.

The output is the generic folder format that :func:`xmodal.datasets.load_folder` reads::

    OUT/images/img_0000.png ...
    OUT/texts.jsonl      {"id", "text", "image", "label"} per line
    OUT/images.jsonl     {"id", "label"} per line
    OUT/meta.json        the generator's parameters and every scene's attributes (written last,
                         so its presence means the folder is complete)

Determinism: the same parameters give byte-identical files. Only ``random.Random.random()`` is
used (its sequence is guaranteed stable across Python versions) and PNGs are written without
metadata.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from xmodal.errors import ConfigError

GENERATOR_VERSION = 1

# attribute -> synonyms used in captions (the first one is the canonical name)
SHAPES: dict[str, list[str]] = {
    "circle": ["circle", "disc", "round dot"],
    "square": ["square", "box", "block"],
    "triangle": ["triangle", "wedge", "pyramid"],
    "star": ["star", "five pointed star"],
    "diamond": ["diamond", "rhombus", "lozenge"],
    "cross": ["cross", "plus sign"],
}
COLOURS: dict[str, tuple[tuple[int, int, int], list[str]]] = {
    "red": ((214, 32, 32), ["red", "crimson", "scarlet"]),
    "green": ((34, 160, 52), ["green", "emerald", "grass green"]),
    "blue": ((32, 72, 214), ["blue", "navy blue", "cobalt"]),
    "yellow": ((240, 206, 24), ["yellow", "golden", "lemon yellow"]),
    "purple": ((132, 40, 176), ["purple", "violet", "magenta"]),
    "orange": ((246, 128, 20), ["orange", "amber", "tangerine"]),
}
# radius as a fraction of the image side
SIZES: dict[str, tuple[tuple[float, float], list[str]]] = {
    "small": ((0.09, 0.12), ["small", "tiny", "little"]),
    "medium": ((0.16, 0.19), ["medium sized", "mid sized", "medium"]),
    "large": ((0.25, 0.29), ["large", "big", "huge"]),
}
# centre as a fraction of the image side
POSITIONS: dict[str, tuple[tuple[float, float], list[str]]] = {
    "top left": ((0.27, 0.27), ["in the top left corner", "near the upper left", "at the top left"]),
    "top right": ((0.73, 0.27), ["in the top right corner", "near the upper right", "at the top right"]),
    "bottom left": ((0.27, 0.73), ["in the bottom left corner", "near the lower left", "at the bottom left"]),
    "bottom right": ((0.73, 0.73), ["in the bottom right corner", "near the lower right", "at the bottom right"]),
    "center": ((0.5, 0.5), ["in the center", "in the middle", "right in the centre"]),
}

# {a} article, {size} {colour} {shape} {where}
TEMPLATES = [
    "{a} {size} {colour} {shape} {where}",
    "{where_cap} there is {a} {size} {colour} {shape}",
    "a picture of {a} {size} {colour} {shape} {where}",
    "{a} {colour} {shape}, {size}, {where}",
    "one {size} {shape} coloured {colour} {where}",
    "{where_cap} sits {a} {size} {shape} painted {colour}",
    "this image shows {a} {size} {colour} {shape} {where}",
    "{a} {size} {colour} {shape} drawn {where} on a pale background",
]

# the same scenes captioned in Chinese (``lang="zh"``): a language written without spaces, for
# the multilingual encoder and the word segmenter (docs/results.md, "Texts in other languages")
ZH_WORDS: dict[str, dict[str, list[str]]] = {
    "shape": {"circle": ["圆形", "圆盘", "圆点"], "square": ["正方形", "方块", "方形"],
              "triangle": ["三角形", "楔形", "金字塔形"], "star": ["星形", "五角星"],
              "diamond": ["菱形", "钻石形", "斜方形"], "cross": ["十字形", "加号"]},
    "colour": {"red": ["红色", "深红色", "猩红色"], "green": ["绿色", "翠绿色", "草绿色"],
               "blue": ["蓝色", "海军蓝", "钴蓝色"], "yellow": ["黄色", "金色", "柠檬黄"],
               "purple": ["紫色", "紫罗兰色", "品红色"], "orange": ["橙色", "琥珀色", "橘色"]},
    "size": {"small": ["小", "很小", "微小"], "medium": ["中等大小", "中号", "不大不小"],
             "large": ["大", "很大", "巨大"]},
    "where": {"top left": ["在左上角", "靠近左上方", "位于左上"],
              "top right": ["在右上角", "靠近右上方", "位于右上"],
              "bottom left": ["在左下角", "靠近左下方", "位于左下"],
              "bottom right": ["在右下角", "靠近右下方", "位于右下"],
              "center": ["在中间", "在正中央", "位于中心"]},
}
ZH_TEMPLATES = [
    "一个{size}的{colour}{shape}{where}",
    "{where}有一个{size}的{colour}{shape}",
    "一张图片，画着一个{size}的{colour}{shape}{where}",
    "{colour}的{shape}，{size}，{where}",
    "一个涂成{colour}的{size}{shape}{where}",
    "{where}放着一个{size}的{shape}，颜色是{colour}",
    "这张图显示一个{size}的{colour}{shape}{where}",
    "浅色背景上{where}画着一个{size}的{colour}{shape}",
]
# and in Japanese (``lang="ja"``): kanji and kana, no spaces either; the same attributes
JA_WORDS: dict[str, dict[str, list[str]]] = {
    "shape": {"circle": ["円", "丸", "円盤"], "square": ["正方形", "四角", "ブロック"],
              "triangle": ["三角形", "くさび形", "ピラミッド形"], "star": ["星形", "五芒星"],
              "diamond": ["ひし形", "菱形", "ダイヤ形"], "cross": ["十字", "プラス記号"]},
    "colour": {"red": ["赤い", "真っ赤な", "深紅の"], "green": ["緑の", "エメラルド色の", "草色の"],
               "blue": ["青い", "紺色の", "コバルトブルーの"], "yellow": ["黄色い", "金色の", "レモン色の"],
               "purple": ["紫の", "すみれ色の", "マゼンタの"], "orange": ["オレンジ色の", "琥珀色の", "みかん色の"]},
    "size": {"small": ["小さな", "とても小さい", "ちっちゃな"], "medium": ["中くらいの", "中型の", "普通の大きさの"],
             "large": ["大きな", "とても大きい", "巨大な"]},
    "where": {"top left": ["左上の隅に", "左上あたりに", "左上に"],
              "top right": ["右上の隅に", "右上あたりに", "右上に"],
              "bottom left": ["左下の隅に", "左下あたりに", "左下に"],
              "bottom right": ["右下の隅に", "右下あたりに", "右下に"],
              "center": ["中央に", "真ん中に", "ちょうど中心に"]},
}
JA_TEMPLATES = [
    "{where}{size}{colour}{shape}がある",
    "{size}{colour}{shape}が{where}あります",
    "{where}{size}{colour}{shape}が描かれた画像",
    "{size}{colour}{shape}が一つ{where}置かれている",
    "この画像には{where}{size}{colour}{shape}が写っている",
    "淡い背景の{where}{size}{colour}{shape}が描かれている",
    "{where}見えるのは{size}{colour}{shape}です",
    "{colour}{shape}、{size}もの、{where}",
]
#: caption languages: English, and the languages written without spaces, by (words, templates)
WORDS_BY_LANG = {"zh": (ZH_WORDS, ZH_TEMPLATES), "ja": (JA_WORDS, JA_TEMPLATES)}
LANGS = ("en", *WORDS_BY_LANG)

LABEL_BY = ("shape", "colour", "shape+colour")


@dataclass(frozen=True)
class Scene:
    """One rendered image and the attributes its captions name."""

    id: str
    shape: str
    colour: str
    size: str
    position: str
    captions: tuple[str, ...]

    def label(self, label_by: str = "shape") -> str:
        if label_by == "shape":
            return self.shape
        if label_by == "colour":
            return self.colour
        return f"{self.colour} {self.shape}"


def _pick(rng: random.Random, seq):
    seq = list(seq)
    return seq[min(int(rng.random() * len(seq)), len(seq) - 1)]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def make_caption(rng: random.Random, shape: str, colour: str, size: str, position: str,
                 lang: str = "en") -> str:
    """One caption for a scene: a random template filled with random synonyms (the same number
    of draws in every language, so a scene's attributes do not depend on ``lang``)."""
    if lang in WORDS_BY_LANG:
        vocabulary, templates = WORDS_BY_LANG[lang]
        template = _pick(rng, templates)
        words = {"shape": _pick(rng, vocabulary["shape"][shape]),
                 "colour": _pick(rng, vocabulary["colour"][colour]),
                 "size": _pick(rng, vocabulary["size"][size]), "where": _pick(rng, vocabulary["where"][position])}
        return template.format(**words)
    template = _pick(rng, TEMPLATES)
    words = {
        "shape": _pick(rng, SHAPES[shape]),
        "colour": _pick(rng, COLOURS[colour][1]),
        "size": _pick(rng, SIZES[size][1]),
        "where": _pick(rng, POSITIONS[position][1]),
    }
    words["where_cap"] = words["where"][0].upper() + words["where"][1:]
    # the article agrees with whatever word follows it in this template
    after = template.split("{a} ", 1)[1].split(" ", 1)[0] if "{a} " in template else "{size}"
    following = words.get(after.strip("{},"), after)
    words["a"] = _article(following)
    text = template.format(**words)
    return text[0].upper() + text[1:]


def _polygon(cx: float, cy: float, r: float, n: int, rotation: float, inner: float | None = None):
    pts = []
    steps = n * 2 if inner else n
    for k in range(steps):
        angle = rotation + 2 * math.pi * k / steps - math.pi / 2
        radius = r if (inner is None or k % 2 == 0) else r * inner
        pts.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return pts


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float,
                rotation: float, fill) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        s = r * 0.85
        draw.polygon(_polygon(cx, cy, s * math.sqrt(2), 4, math.pi / 4 + rotation), fill=fill)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy + r * 0.15, r * 1.05, 3, rotation), fill=fill)
    elif shape == "star":
        draw.polygon(_polygon(cx, cy, r * 1.05, 5, rotation, inner=0.42), fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r * 1.05), (cx + r * 0.7, cy), (cx, cy + r * 1.05), (cx - r * 0.7, cy)],
                     fill=fill)
    elif shape == "cross":
        w = r * 0.36
        draw.polygon([(cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w),
                      (cx + r, cy + w), (cx + w, cy + w), (cx + w, cy + r), (cx - w, cy + r),
                      (cx - w, cy + w), (cx - r, cy + w), (cx - r, cy - w), (cx - w, cy - w)], fill=fill)
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(shape)


def _background(rng: random.Random, size: int) -> np.ndarray:
    """A pale tinted background with a soft vertical gradient (not named by the captions).

    Kept smooth on purpose: an ImageNet CNN reacts strongly to texture, and a texture the
    captions never mention would drown the attributes they do mention.
    """
    top = np.array([228 + 24 * rng.random() for _ in range(3)], dtype=np.float64)
    bottom = top - 10 * rng.random()
    t = np.linspace(0.0, 1.0, size)[:, None, None]
    img = top[None, None, :] * (1 - t) + bottom[None, None, :] * t
    img = np.broadcast_to(img, (size, size, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render_scene(rng: random.Random, shape: str, colour: str, size: str, position: str,
                 image_size: int = 96, supersample: int = 4) -> Image.Image:
    """Render one scene as an RGB image (anti-aliased by supersampling)."""
    big = image_size * supersample
    canvas = Image.fromarray(_background(rng, image_size)).resize((big, big), Image.NEAREST)
    draw = ImageDraw.Draw(canvas)
    (r_lo, r_hi), _ = SIZES[size]
    r = (r_lo + (r_hi - r_lo) * rng.random()) * big
    (px, py), _ = POSITIONS[position]
    jitter = 0.04 * big
    cx = px * big + (rng.random() * 2 - 1) * jitter
    cy = py * big + (rng.random() * 2 - 1) * jitter
    margin = r * 1.1 + 1
    cx, cy = min(max(cx, margin), big - margin), min(max(cy, margin), big - margin)
    rotation = 0.0 if shape in ("square", "diamond", "circle") else (rng.random() * 2 - 1) * math.radians(12)
    rgb, _ = COLOURS[colour]
    shade = 0.9 + 0.2 * rng.random()  # a little variation in hue intensity
    fill = tuple(int(min(255, round(c * shade))) for c in rgb)
    _draw_shape(draw, shape, cx, cy, r, rotation, fill)
    return canvas.resize((image_size, image_size), Image.LANCZOS)


def make_scenes(n: int = 300, seed: int = 0, captions_per_image: int = 1, lang: str = "en") -> list[Scene]:
    """The scene list (attributes + captions) without rendering anything.

    Shapes cycle so that every class has the same number of images (± 1); colour, size and
    position are drawn at random.
    """
    if n < 1:
        raise ConfigError("the synthetic data set needs at least one image (--n >= 1)")
    if captions_per_image < 1:
        raise ConfigError("captions_per_image must be at least 1")
    if lang not in LANGS:
        raise ConfigError(f"unknown caption language {lang!r}; use one of {', '.join(LANGS)}")
    rng = random.Random(seed)
    shapes = list(SHAPES)
    scenes = []
    for i in range(n):
        shape = shapes[i % len(shapes)]
        colour = _pick(rng, COLOURS)
        size = _pick(rng, SIZES)
        position = _pick(rng, POSITIONS)
        captions = tuple(make_caption(rng, shape, colour, size, position, lang) for _ in range(captions_per_image))
        scenes.append(Scene(f"img_{i:04d}.png", shape, colour, size, position, captions))
    return scenes


def _write_jsonl(path: Path, rows) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")


def _params(n, seed, image_size, captions_per_image, label_by, lang="en") -> dict:
    return {"generator": "xmodal.synthetic", "version": GENERATOR_VERSION, "n": n, "seed": seed,
            "image_size": image_size, "captions_per_image": captions_per_image, "label_by": label_by,
            **({"lang": lang} if lang != "en" else {})}


def generate(out: str | os.PathLike, n: int = 300, seed: int = 0, image_size: int = 96,
             captions_per_image: int = 1, label_by: str = "shape", overwrite: bool = False,
             lang: str = "en") -> Path:
    """Write the data set to ``out`` (generic folder format) and return its path.

    The folder is built in a temporary sibling and moved into place, so an interrupted run never
    leaves a half-written data set behind. An existing non-empty ``out`` is an error unless
    ``overwrite``.
    """
    if label_by not in LABEL_BY:
        raise ConfigError(f"unknown label_by {label_by!r}; use one of {', '.join(LABEL_BY)}")
    if not 16 <= image_size <= 1024:
        raise ConfigError("image_size must be between 16 and 1024 pixels")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"{out} already exists and is not empty; choose another --out or pass --overwrite")
    scenes = make_scenes(n, seed, captions_per_image, lang)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "images").mkdir()
        for index, scene in enumerate(scenes):
            # one stream per image: an image does not depend on how many came before it
            rng = random.Random(f"{seed}:{index}")
            img = render_scene(rng, scene.shape, scene.colour, scene.size, scene.position, image_size)
            img.save(tmp / "images" / scene.id, format="PNG", optimize=False, compress_level=6)
        _write_jsonl(tmp / "images.jsonl", ({"id": s.id, "label": s.label(label_by)} for s in scenes))
        _write_jsonl(tmp / "texts.jsonl", (
            {"id": f"t{i:04d}_{j}", "text": caption, "image": s.id, "label": s.label(label_by)}
            for i, s in enumerate(scenes) for j, caption in enumerate(s.captions)))
        meta = dict(_params(n, seed, image_size, captions_per_image, label_by, lang),
                    scenes=[{k: v for k, v in asdict(s).items() if k != "captions"} for s in scenes])
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def is_complete(path: str | os.PathLike, **params) -> bool:
    """True when ``path`` holds a finished data set generated with exactly these parameters."""
    meta_path = Path(path) / "meta.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    want = _params(params.get("n", 300), params.get("seed", 0), params.get("image_size", 96),
                   params.get("captions_per_image", 1), params.get("label_by", "shape"))
    return all(meta.get(k) == v for k, v in want.items())


def ensure(path: str | os.PathLike, n: int = 300, seed: int = 0, image_size: int = 96,
           captions_per_image: int = 1, label_by: str = "shape") -> tuple[Path, bool]:
    """Generate into ``path`` unless it already holds the same data set; returns (path, generated)."""
    params = dict(n=n, seed=seed, image_size=image_size, captions_per_image=captions_per_image,
                  label_by=label_by)
    if is_complete(path, **params):
        return Path(path), False
    return generate(path, overwrite=True, **params), True
