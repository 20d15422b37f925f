"""COCO-mini among thousands of texts, in the folder format (`xmodal.datasets`): the 159 images
with their 795 captions, and the 4,998 Pascal Sentences (people, animals, vehicles, rooms: the
same kind of scene) as texts that describe no image of the set. 5,793 texts: more than the 1000
an image task's page carries, so what a person can find on the page depends on which texts the
page carries.

    python scripts/coco_mini_large/build.py --out /tmp/coco-mini-large
    xmodal simulate --data /tmp/coco-mini-large --labels 20 --json large.json

`images/` gets hard links to the COCO-mini images where the file system allows, else copies.
Write OUT outside this repository: the data stays out of it.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def build(coco: Path, pascal: Path, out: Path) -> tuple[int, int]:
    """(captions, distractor texts) written to ``out``."""
    from xmodal.datasets import write_folder

    entries = json.loads((coco / "pairs.json").read_text())
    sentences = json.loads((pascal / "pascal_sentences.json").read_text())
    captions = [{"id": f"{e['image_id']}#{k}", "text": c, "image": e["file"]}
                for e in entries for k, c in enumerate(e["captions"])]
    others = [{"id": f"pascal:{name}#{k}", "text": c}
              for name, v in sorted(sentences.items()) for k, c in enumerate(v["captions"])]
    texts = captions + others
    random.Random(0).shuffle(texts)   # a team's file is in no particular order: the captions are not first
    write_folder(out, {e["file"]: coco / e["file"] for e in entries}, texts)
    return len(captions), len(others)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--coco", type=Path, default=DATA / "coco_mini")
    p.add_argument("--pascal", type=Path, default=DATA / "pascal_sentences")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    n, m = build(args.coco, args.pascal, args.out)
    print(f"wrote {len(json.loads((args.coco / 'pairs.json').read_text()))} images, {n} captions and "
          f"{m} Pascal sentences to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
