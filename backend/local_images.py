"""Images a request names by location, read only inside the allowed local roots.

``POST /search {"image": ...}`` (query by an image that need not be in the project) and ``/predict``
tasks that carry ``data.image`` but no ``data.item_id`` name an image as

- a file path (absolute, or relative to the first allowed root) or a ``file://`` URL;
- Label Studio's local-files URL, ``/data/local-files/?d=<path>`` (with or without the host), a path
  under Label Studio's ``LOCAL_FILES_DOCUMENT_ROOT`` (the project's ``document_root``, else
  ``$LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``);
- an inline ``data:image/...;base64,`` URL (the ``--images inline`` tasks), decoded in memory.

A file is opened only when its real path (symlinks and ``..`` resolved) lies under an allowed root:
``$XMODAL_IMAGE_ROOTS`` (``os.pathsep``-separated), else the folder holding the project's images.
Everything else is refused before any file is touched: a path outside the roots (403), remote
``http(s)`` URLs (400: the backend never fetches on a request's behalf), NUL bytes (also ``%00``),
a component over 255 bytes or an unreadable ``data:`` URL (400). Before an image is decoded its
size and header are checked: over ``$XMODAL_MAX_IMAGE_BYTES`` is 413, over
``$XMODAL_MAX_IMAGE_PIXELS`` or no image at all 422 (:func:`check_decodable`). The check is on strings and
``realpath`` only; nothing is opened to decide.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from xmodal import settings
from xmodal.encoders.image import max_image_bytes, max_image_pixels
from xmodal.errors import ApiError
from xmodal.labelstudio.images import images_folder
from xmodal.project.workspace import Workspace

LOCAL_FILES_PATH = "/data/local-files/"
MAX_INLINE_BYTES = 20 * 1024 * 1024
NAME_MAX = 255   # bytes per path component (ext4, xfs, apfs)


@dataclass(frozen=True)
class ImageRef:
    """A resolved reference: ``path`` (a real path inside a root) or ``data`` (inline bytes)."""

    path: str | None = None
    data: bytes | None = None
    shown: str | None = None    # ``path`` relative to its root: what an error message names


@dataclass(frozen=True)
class _ProjectImages:
    folder: str | None          # the deepest folder holding every image (real path)
    by_path: dict[str, str]     # real path -> image id


_project_images_cache: dict[tuple[str, int], _ProjectImages] = {}


def _project_images(ws: Workspace) -> _ProjectImages:
    """The project's image folder and path -> id map, computed once per items.json version (one
    ``realpath`` per image: not something to repeat on every request or task)."""
    key = (str(ws.root), ws.items_path.stat().st_mtime_ns)
    hit = _project_images_cache.get(key)
    if hit is None:
        real = [os.path.realpath(p) for p in ws.contents("image")]
        hit = _ProjectImages(folder=str(images_folder(real)) if real else None,
                             by_path=dict(zip(real, ws.ids("image"))))
        _project_images_cache.clear()  # one project's map at a time is enough
        _project_images_cache[key] = hit
    return hit


def allowed_roots(ws: Workspace) -> list[str]:
    """Real paths of the roots images may be read from (see the module doc)."""
    env = settings.get("XMODAL_IMAGE_ROOTS")
    roots = [r for r in env.split(os.pathsep) if r.strip()]
    if not roots:
        folder = _project_images(ws).folder
        roots = [folder] if folder else []
    return [os.path.realpath(os.path.expanduser(r)) for r in roots]


def _document_root(ws: Workspace) -> str | None:
    ls = ws.config.get("label_studio") or {}
    return ls.get("document_root") or settings.get("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT")


def _inline(ref: str) -> ImageRef:
    header, sep, payload = ref.partition(",")
    if not sep or not header.startswith("data:image/") or not header.endswith(";base64"):
        raise ApiError(400, "an inline image must be a data:image/<type>;base64,<data> URL")
    if len(payload) > MAX_INLINE_BYTES * 4 // 3 + 4:
        raise ApiError(413, f"inline image larger than {MAX_INLINE_BYTES // 2**20} MiB")
    try:
        return ImageRef(data=base64.b64decode(payload, validate=True))
    except (binascii.Error, ValueError):
        raise ApiError(400, "the inline image is not valid base64") from None


def _candidate_path(ref: str, ws: Workspace, roots: list[str]) -> str:
    """The file path a reference names (not yet checked against the roots)."""
    parsed = urllib.parse.urlsplit(ref)
    if parsed.path == LOCAL_FILES_PATH or parsed.path.rstrip("/") == LOCAL_FILES_PATH.rstrip("/"):
        rel = urllib.parse.parse_qs(parsed.query).get("d", [""])[0]
        doc_root = _document_root(ws)
        if not rel or not doc_root:
            raise ApiError(400, "a local-files URL needs ?d=<path> and a known Label Studio document "
                                "root (LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT)")
        return os.path.join(doc_root, rel.lstrip("/"))
    if parsed.scheme in ("http", "https", "ftp", "s3", "gs"):
        raise ApiError(400, f"{parsed.scheme} URLs are not fetched: give a local path, a Label "
                            "Studio local-files URL or an inline data: URL")
    if parsed.scheme == "file":
        return urllib.parse.unquote(parsed.path)
    if parsed.scheme and len(parsed.scheme) > 1:  # (one letter: a Windows drive)
        raise ApiError(400, f"unsupported image reference scheme {parsed.scheme!r}")
    path = os.path.expanduser(ref)
    if not os.path.isabs(path):
        if not roots:
            raise ApiError(400, "a relative image path needs XMODAL_IMAGE_ROOTS")
        path = os.path.join(roots[0], path)
    return path


def _usable(path: str) -> str:
    """A path the OS can take: no NUL (``%00`` decodes to one), encodable, every component within
    NAME_MAX (else ``realpath``/``stat`` raise ValueError, UnicodeEncodeError, ENAMETOOLONG)."""
    if "\x00" in path:
        raise ApiError(400, "the image path holds a NUL byte (after URL decoding)")
    try:
        parts = os.fsencode(path).split(os.fsencode(os.sep))
    except UnicodeError:
        raise ApiError(400, "the image path is not valid Unicode") from None
    if any(len(part) > NAME_MAX for part in parts):
        raise ApiError(400, f"a component of the image path is longer than {NAME_MAX} bytes")
    return path


def resolve_image(ref, ws: Workspace) -> ImageRef:
    """A request's image reference -> :class:`ImageRef`, or an :class:`ApiError` (module doc)."""
    if not isinstance(ref, str) or not ref.strip():
        raise ApiError(400, "image must be a non-empty string (a path, a local-files URL or a "
                            "data: URL)")
    ref = ref.strip()
    if ref.startswith("data:"):
        return _inline(ref)
    if "\x00" in ref or len(ref) > 4096:
        raise ApiError(400, "image reference is not a usable path")
    roots = allowed_roots(ws)
    real = os.path.realpath(_usable(_candidate_path(ref, ws, roots)))
    if not any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in roots):
        # the caller's own string, never the roots or the resolved path (server layout)
        raise ApiError(403, f"image {ref[:200]!r} is outside the allowed local roots; it was not "
                            "read (the operator can allow more folders with XMODAL_IMAGE_ROOTS)")
    return ImageRef(path=real, shown=_shown(real, roots))


def _shown(real: str, roots: list[str]) -> str:
    """How an error names a file: relative to the allowed root holding it."""
    for root in roots:
        if real.startswith(root.rstrip(os.sep) + os.sep):
            return os.path.relpath(real, root)
    return os.path.basename(real)


def known_item(ref: ImageRef, ws: Workspace) -> str | None:
    """The project's image id at this path, if it is one of the project's images."""
    return None if ref.path is None else _project_images(ws).by_path.get(ref.path)


def check_decodable(ref: ImageRef) -> None:
    """Refuse, before decoding, an image over the byte limit (413) or the pixel limit, or one that
    is no image at all (422): only its header is read."""
    from PIL import Image, UnidentifiedImageError

    size = len(ref.data or b"") if ref.path is None else os.path.getsize(ref.path)
    if size > max_image_bytes():
        raise ApiError(413, f"the image is larger than {max_image_bytes()} bytes (XMODAL_MAX_IMAGE_BYTES)")
    try:
        with Image.open(ref.path if ref.path is not None else io.BytesIO(ref.data or b"")) as img:
            width, height = img.size
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        raise ApiError(422, "the image cannot be read as an image (unknown or broken format)") from None
    if width * height > max_image_pixels():
        raise ApiError(422, f"the image has {width}x{height} pixels, more than the limit of "
                            f"{max_image_pixels()} (XMODAL_MAX_IMAGE_PIXELS)")


def readable_path(ref: ImageRef, tmp_dir: str) -> str:
    """A path the image encoder can open: the file itself, or the inline bytes written to
    ``tmp_dir``."""
    if ref.path is not None:
        if not Path(ref.path).is_file():
            raise ApiError(404, f"image {ref.shown!r} does not exist (under the allowed roots)")
        check_decodable(ref)
        return ref.path
    check_decodable(ref)
    path = os.path.join(tmp_dir, "query-image")
    with open(path, "wb") as fh:
        fh.write(ref.data or b"")
    return path
