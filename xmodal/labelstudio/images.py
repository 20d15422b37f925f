"""How Label Studio's browser gets the images of a project.

Images reach Label Studio in one of three ways (``images``):

- ``local``: a local-files import storage on the images folder; tasks carry
  ``/data/local-files/?d=<path relative to the document root>``. Label Studio must run with
  ``LOCAL_FILES_SERVING_ENABLED=true`` and ``LOCAL_FILES_DOCUMENT_ROOT`` a parent of the images
  (``document_root`` here, default ``$LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`` or ``/``, Label
  Studio's own default). The first URL is fetched once through Label Studio to prove it works.
- ``inline``: JPEG thumbnails as ``data:`` URLs inside the task data (works with any Label Studio;
  tasks get bigger: ~40 KB per image-to-text task, ~60 KB per text-to-image task).
- a URL prefix (``http(s)://…/``): the image id is appended (a web server or bucket you run).
- ``auto`` (default): ``local`` when Label Studio accepts it, else ``inline``, with a note.
- ``source``: a project made from a Label Studio project's tasks (``--from-label-studio``,
  :mod:`xmodal.labelstudio.source`): each image's URL in its source task (``source/urls.json`` in the
  workspace), so Label Studio serves the images it already has.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import urllib.parse
from pathlib import Path

from xmodal import settings
from xmodal.errors import ConfigError
from xmodal.logfmt import Say, quiet

log = logging.getLogger(__name__)

IMAGE_MODES = ("auto", "local", "inline", "source")
SOURCE_DIR = "source"                        # a workspace's folder of items from Label Studio tasks
SOURCE_URLS = f"{SOURCE_DIR}/urls.json"      # their image id -> the URL in its source task
MEDOID_THUMB = 512
OPTION_THUMB = 160


# -- image URLs -------------------------------------------------------------------------------

def document_root(explicit: str | None = None) -> Path:
    root = explicit or settings.get("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT") or os.sep
    return Path(root).expanduser().resolve()


def images_folder(paths) -> Path:
    """The deepest folder holding every image (the local storage to register)."""
    parents = {str(Path(p).resolve().parent) for p in paths}
    return Path(os.path.commonpath(sorted(parents))) if parents else Path(os.sep)


def local_files_url(path, root: Path) -> str:
    p = Path(path).resolve()
    try:
        rel = p.relative_to(root)
    except ValueError:
        raise ConfigError(f"image {p} is not under Label Studio's local-files document root {root}; "
                          "pass --document-root (Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT) "
                          "or --images inline") from None
    return "/data/local-files/?d=" + urllib.parse.quote(rel.as_posix(), safe="/")


def inline_url(path, max_side: int) -> str:
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im.thumbnail((max_side, max_side))
            buf = io.BytesIO()
            im.convert("RGB").save(buf, format="JPEG", quality=80)
    except OSError as exc:
        log.warning("cannot read image %s for an inline thumbnail: %s", path, exc)
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class ImageURLs:
    """image id -> what Label Studio's browser loads, in one of the modes of the module doc."""

    def __init__(self, ws, mode: str, root: Path | None = None):
        self.ws, self.mode, self.root = ws, mode, root
        self._paths = dict(zip(ws.ids("image"), ws.contents("image")))
        self._cache: dict[tuple[str, int], str] = {}
        self._sources: dict | None = None

    def __call__(self, image_id: str, max_side: int = MEDOID_THUMB) -> str:
        key = (image_id, max_side if self.mode == "inline" else 0)
        if key not in self._cache:
            path = self._paths[image_id]
            if self.mode == "inline":
                self._cache[key] = inline_url(path, max_side)
            elif self.mode == "source":
                self._cache[key] = self._source_urls().get(image_id, "")
            elif self.mode == "local":
                self._cache[key] = local_files_url(path, self.root)
            else:  # URL prefix
                self._cache[key] = self.mode.rstrip("/") + "/" + urllib.parse.quote(image_id, safe="/")
        return self._cache[key]


    def _source_urls(self) -> dict:
        if self._sources is None:
            path = self.ws.root / SOURCE_URLS
            try:
                self._sources = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"images 'source': cannot read {path} ({exc}); rerun `xmodal project "
                                  "create --from-label-studio`") from None
        return self._sources


def _check_local_url(client, url: str) -> bool:
    try:
        r = client._get(url.split("?", 1)[0], **dict(urllib.parse.parse_qsl(url.split("?", 1)[1])))
    except Exception as exc:  # noqa: BLE001 - any failure means "not served"
        log.info("local-files check of %s failed: %s", url, exc)
        return False
    return r.status_code == 200 and len(r.content) > 0


def setup_images(client, pid: int, ws, images: str = "auto", root_dir: str | None = None,
                 say: Say = quiet) -> ImageURLs:
    """Decide how Label Studio shows images (``images``: a mode of the module doc;
    ``root_dir``: Label Studio's local-files document root) and prepare it."""
    mode = images or "auto"
    if mode.startswith(("http://", "https://")):
        return ImageURLs(ws, mode)
    if mode not in IMAGE_MODES:
        raise ConfigError(f"--images must be auto, local, inline, source or an http(s):// URL prefix, "
                          f"not {mode!r}")
    if mode in ("inline", "source"):
        return ImageURLs(ws, mode)
    root = document_root(root_dir)
    folder = images_folder(ws.contents("image"))
    problem = None
    try:
        if folder == root or root not in folder.parents:
            raise ConfigError(f"the images folder {folder} is not strictly under Label Studio's local-files "
                              f"document root {root}; pass --document-root")
        client.ensure_local_storage(pid, str(folder), title=f"xmodal images ({ws.name})")
        urls = ImageURLs(ws, "local", root)
        first = ws.ids("image")[0]
        if not _check_local_url(client, urls(first)):
            raise ConfigError(f"Label Studio does not serve {urls(first)}: is its "
                              f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT {root}? (pass --document-root)")
        return urls
    except ConfigError as exc:
        if mode == "local":
            raise
        problem = str(exc)
    say(f"note: images are sent inline as thumbnails (local files not usable: {problem[:300]})")
    return ImageURLs(ws, "inline")
