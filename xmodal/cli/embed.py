"""``xmodal embed``: features for a folder of images or a file of texts, with the disk cache."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from xmodal.datasets.folder import image_files
from xmodal.encoders import TEXT_ENCODER_HELP
from xmodal.errors import DataError

log = logging.getLogger(__name__)


EXAMPLES = """\
examples:
  xmodal embed --images photos/ --out images.npy
  xmodal embed --texts captions.txt --encoder minilm --out texts.npy
  xmodal worker &  xmodal worker &        # here or on other machines (same REDIS_URL)
  xmodal embed --images photos/ --out images.npy --distributed

Rows follow the input order (images: sorted paths under DIR, recursively; texts: one per line of
FILE, UTF-8). Next to FEATURES.npy, FEATURES.json lists the items, the encoder id and the failures
(unreadable images get a NaN row, texts without a known word a zero row). SIF encoders fit their
common component on these texts and also write FEATURES.encoder.npz (SIFEncoder.load) so later
texts embed the same way.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "embed",
        help="compute image or text features (frozen pretrained encoders, cached on disk)",
        description="Compute features with a frozen pretrained encoder; features already in the "
        "cache (keyed by content hash and encoder id) are not recomputed.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", metavar="DIR", type=Path, help="folder of images")
    source.add_argument("--texts", metavar="FILE", type=Path, help="UTF-8 file, one text a line")
    parser.add_argument(
        "--encoder",
        metavar="NAME",
        help="image: efficientnet-lite0 (default), torchvision:<arch>; text: " + TEXT_ENCODER_HELP,
    )
    parser.add_argument(
        "--weights", metavar="FILE", help="local .pth weights for a torchvision:<arch> encoder"
    )
    parser.add_argument("--out", metavar="FEATURES.npy", type=Path, required=True)
    parser.add_argument(
        "--cache-dir",
        metavar="DIR",
        type=Path,
        help="cache root (default: $XMODAL_CACHE_DIR or ~/.cache/xmodal)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    dist = parser.add_argument_group(
        "distributed", "fan the uncached items out as chunked RQ jobs to `xmodal worker`s "
        "(any machine with the same Redis and the images at the same paths); rows come back in "
        "input order; a rerun computes only what is missing")
    dist.add_argument("--distributed", action="store_true",
                      help="compute on the workers instead of in this process")
    dist.add_argument("--queue", metavar="NAME",
                      help="embed queue (default $XMODAL_EMBED_QUEUE or xmodal-embed)")
    dist.add_argument("--chunk-size", type=int, metavar="N",
                      help="items per job (default 64 images / 512 texts)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from xmodal.encoders import default_cache_dir, get_encoder
    from xmodal.encoders.cache import FeatureCache, embed_with_cache

    modality = "image" if args.images is not None else "text"
    items = image_files(args.images) if modality == "image" else _texts(args.texts)
    cache_dir = args.cache_dir or default_cache_dir()
    options = {"cache_dir": cache_dir, "progress": not args.no_progress}
    if args.weights:
        options["weights"] = args.weights
    name = args.encoder
    if modality == "text":
        from xmodal.encoders.language import resolve_text_encoder

        name, why = resolve_text_encoder(name, items)
        print(f"text encoder: {name} ({why})", file=sys.stderr)
        if not (name.startswith("sif") or name == "minilm"):
            # e5's weights and engine come from its package (MiniLM keeps its built graph there)
            options.pop("cache_dir")
    encoder = get_encoder(modality, name, **options)
    cache = FeatureCache(Path(cache_dir) / "features")
    if getattr(args, "distributed", False):
        from xmodal.encoders.distributed import embed_distributed

        X, failures = embed_distributed(
            encoder, items, cache, options=options, fit=True, queue=args.queue,
            chunk_size=args.chunk_size, progress=not args.no_progress, say=print)
    else:
        X, failures = embed_with_cache(encoder, items, cache, progress=not args.no_progress,
                                       fit=True)
    out = args.out if args.out.suffix == ".npy" else args.out.with_name(args.out.name + ".npy")
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, X)
    sidecar = {
        "encoder": encoder.name,
        "encoder_id": encoder.encoder_id,
        "modality": modality,
        "shape": list(X.shape),
        "items": items,
        "failures": [{"item": item, "reason": reason} for item, reason in failures],
    }
    if hasattr(encoder, "save"):
        encoder_file = out.with_suffix(".encoder.npz")
        encoder.save(encoder_file)
        sidecar["encoder_file"] = str(encoder_file)
    out.with_suffix(".json").write_text(json.dumps(sidecar, indent=1, ensure_ascii=False))
    print(f"wrote {out} {X.shape[0]}x{X.shape[1]} ({encoder.encoder_id})")
    for item, reason in failures:
        log.warning("skipped %s: %s", item, reason)
    return 0


def _texts(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as exc:
        raise DataError(f"text file not found: {path}") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text: {exc}") from exc
    if not lines:
        raise DataError(f"{path} has no lines")
    return lines
