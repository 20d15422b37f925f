"""COCO-mini with Chinese captions, in the folder format (`xmodal.datasets`): a real-photo data set
whose texts are in a language written without spaces.

    python scripts/coco_mini_zh/build.py --coco ../shared/data/coco_mini --out /tmp/coco-mini-zh
    xmodal eval --dataset folder --data /tmp/coco-mini-zh --n 10,20,50,100      # auto = e5
    xmodal eval --dataset folder --data /tmp/coco-mini-zh --n 10,20,50,100 --text-encoder minilm

With ``--labels``, every image and its caption get a class: the COCO supercategory (person,
vehicle, animal, furniture, … 11 in all here) of the largest object annotated in the image, from
COCO's own instance annotations. The evaluation then reports MAP by class, as on Wikipedia,
instead of Recall@10 of the one coupled caption.

`captions_zh.json` holds the first COCO caption of each of the 159 images, translated into
Simplified Chinese by hand (an engineer of this project, 2026-12; COCO captions are CC BY 4.0, so
are these translations). `images/` gets hard links to the COCO-mini images where the file system
allows, else copies (a folder data set refuses symbolic links that leave it). Write OUT outside
this repository: the data stays out of it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def largest_object_supercategory(coco: Path) -> dict[int, str]:
    """image id -> the supercategory of its largest annotated object (COCO instance annotations)."""
    out: dict[int, tuple[float, str]] = {}
    for path in sorted((coco / "annotations").glob("instances_*.json")):
        found = json.loads(path.read_text())
        supercategory = {c["id"]: c["supercategory"] for c in found["categories"]}
        for a in found["annotations"]:
            if a["image_id"] not in out or a["area"] > out[a["image_id"]][0]:
                out[a["image_id"]] = (a["area"], supercategory[a["category_id"]])
    return {image: name for image, (_, name) in out.items()}


def build(coco: Path, out: Path, labels: bool = False) -> int:
    from xmodal.datasets import write_folder

    entries = {e["image_id"]: e for e in json.loads((coco / "pairs.json").read_text())}
    captions = json.loads((HERE / "captions_zh.json").read_text(encoding="utf-8"))
    missing = [c["image_id"] for c in captions if c["image_id"] not in entries]
    if missing:
        raise SystemExit(f"{coco} is not COCO-mini: no images {missing[:5]}…")
    classes = largest_object_supercategory(coco) if labels else {}
    if labels and (unlabelled := [c["image_id"] for c in captions if c["image_id"] not in classes]):
        raise SystemExit(f"{coco}: no instance annotations for images {unlabelled[:5]}…")
    files = {c["image_id"]: entries[c["image_id"]]["file"] for c in captions}
    write_folder(out, {f: coco / f for f in files.values()},
                 [{"id": f"zh-{c['image_id']}", "text": c["caption"], "image": files[c["image_id"]],
                   **({"label": classes[c["image_id"]]} if labels else {})}
                  for c in captions])
    return len(captions)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--coco", type=Path, default=Path("../shared/data/coco_mini"))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--labels", action="store_true",
                   help="a class per pair: the supercategory of the image's largest object (MAP)")
    args = p.parse_args(argv)
    n = build(args.coco, args.out, args.labels)
    print(f"wrote {n} Chinese captions and images to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
