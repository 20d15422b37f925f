"""A Label Studio task's image URL -> a local file, fetched through Label Studio with its API key,
only from the configured Label Studio, within the image limits, cached on disk.

    from xmodal.labelstudio.fetch import fetch_image
    path = fetch_image(client, task["data"]["image"])      # ImageFetchError says why not

``client``: a :class:`~xmodal.labelstudio.client.LabelStudioClient` on a configured URL (the
command line's ``connect``; in a worker ``open_label_studio(c["url"], c["api_key"]).client`` with
``c = ls_connection(redis, ws)``, whose URL :mod:`xmodal.labelstudio.hosts` vetted). Only that
client's origin is fetched from, not the other hosts of ``XMODAL_LABEL_STUDIO_HOSTS``: the key is
that Label Studio's.

What a task of Label Studio 1.23 holds, and what happens to it:

- ``/data/upload/<project>/<file>`` (files uploaded or imported through Label Studio) and
  ``/data/local-files/?d=<path>`` (local-files storage): paths on Label Studio, fetched from the
  configured URL with the key;
- cloud storage (S3, GCS, Azure): the task API answers ``/tasks/<id>/resolve/?fileuri=<base64>``
  (or the same on ``$LABEL_STUDIO_HOST``): fetched like the others. A storage with "Use
  pre-signed URLs" on answers it with a redirect (303) to the bucket, another host: refused (the
  error says to turn it off, so that Label Studio proxies the file);
- an absolute URL: fetched only when its origin (scheme, host, port: :func:`xmodal.labelstudio.hosts.origin`)
  is the client's, i.e. the Label Studio the operator configured. Anything else (another host, a
  user part, ``file:``, ``s3://`` not resolved by Label Studio, a relative path Label Studio does
  not serve, a path of its API or account pages, where a GET can act) is refused before any
  connection is made;
- a redirect is followed (at most :data:`MAX_REDIRECTS`) only to the same origin;
- ``data:image/...;base64,`` (inline images, as ``--images inline`` writes them): decoded here,
  nothing is fetched.

Every image is held to the encoders' limits (``$XMODAL_MAX_IMAGE_BYTES``: the download stops
there; ``$XMODAL_MAX_IMAGE_PIXELS`` and a readable image: checked on its header) before it is
kept. The cache: ``<cache_dir>/<sha256 of origin and path>.<ext>`` (default
``$XMODAL_CACHE_DIR/ls-images``), written whole or not at all, so a second run fetches nothing.
A file under an unchanged URL is taken to be unchanged (uploads never change; a local or cloud
file replaced under its name is fetched again only once its cache file is removed).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import urllib.parse
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from xmodal import settings
from xmodal.encoders.base import default_cache_dir
from xmodal.encoders.image import max_image_bytes, max_image_pixels
from xmodal.errors import DataError
from xmodal.fileio import atomic_write_bytes
from xmodal.labelstudio.client import LabelStudioClient
from xmodal.labelstudio.hosts import origin

MAX_REDIRECTS = 3
MAX_URL_CHARS = 8192
_NOT_FILES = ("/api/", "/user/", "/accounts/", "/admin/", "/logout")
_EXT = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "BMP": ".bmp", "WEBP": ".webp", "TIFF": ".tif"}
_DATA_URL = re.compile(r"data:image/[a-z0-9.+-]+;base64,", re.IGNORECASE)
_PRESIGN_HINT = ("a cloud storage with 'Use pre-signed URLs' on redirects to its bucket: turn it off "
                 "in the storage's settings so that Label Studio serves the file itself")


class ImageFetchError(DataError):
    """A task's image was refused or could not be fetched; the message says which and why."""


def cache_root(cache_dir: str | Path | None = None) -> Path:
    return Path(cache_dir) if cache_dir is not None else default_cache_dir() / "ls-images"


def fetch_image(client: LabelStudioClient, url: str, *, cache_dir: str | Path | None = None,
                counts: Counter | None = None) -> Path:
    """The local file of a task's image ``url`` (see the module doc), fetched through ``client``
    (the configured Label Studio, with its key) or found in the cache. Raises
    :class:`ImageFetchError` when the URL is refused (never fetched), the fetch fails, or the
    file is over the limits or no image. ``counts`` (if given) gets one of ``"fetched"``,
    ``"cached"`` or ``"inline"`` added."""
    counts = counts if counts is not None else Counter()
    if not isinstance(url, str) or not url.strip():
        raise ImageFetchError("no image URL")
    url = url.strip()
    if len(url) > MAX_URL_CHARS:
        raise ImageFetchError(f"an image URL of {len(url)} characters (at most {MAX_URL_CHARS})")
    root = cache_root(cache_dir)
    if _DATA_URL.match(url):
        counts["inline"] += 1
        return _keep(root, "data:" + hashlib.sha256(url.encode()).hexdigest(), _inline(url))
    base = _origin_of(client.url)
    path = _path_on(client.url, url, base)
    key = f"{base}\n{path}"
    cached = _cached(root, key)
    if cached is not None:
        counts["cached"] += 1
        return cached
    for _hop in range(MAX_REDIRECTS + 1):
        answer = client.download(path, max_image_bytes())
        if answer.over_limit:
            raise ImageFetchError(f"{_shown(url)}: larger than {max_image_bytes()} bytes "
                                  "(XMODAL_MAX_IMAGE_BYTES); not kept")
        if answer.status in (301, 302, 303, 307, 308) and answer.location:
            target = urllib.parse.urljoin(base + path, answer.location.strip())
            if origin(target) != origin(client.url):
                raise ImageFetchError(f"{_shown(url)}: Label Studio redirected it to another host "
                                      f"({_shown(target, 120)}), which is not fetched; {_PRESIGN_HINT}")
            path = _path_on(client.url, target, base)
            continue
        if answer.status != 200 or answer.content is None:
            raise ImageFetchError(f"{_shown(url)}: Label Studio answered HTTP {answer.status}")
        path = _keep(root, key, answer.content, url)
        counts["fetched"] += 1
        return path
    raise ImageFetchError(f"{_shown(url)}: more than {MAX_REDIRECTS} redirects")


def fetch_images(client: LabelStudioClient, urls: dict, *, cache_dir: str | Path | None = None,
                 failures: tuple[type[BaseException], ...] = (ImageFetchError,)):
    """:func:`fetch_image` of every ``{key: url}``, ``$XMODAL_LS_PARALLEL`` requests at a time.
    Returns ``(paths {key: Path}, failed {key: why}, counts)``: an exception of ``failures`` is one
    key's failure, any other is raised (a caller that can retry later lets network errors
    through)."""

    def one(item):
        key, url = item
        counts: Counter = Counter()     # one per call: the threads share nothing
        try:
            return key, fetch_image(client, url, cache_dir=cache_dir, counts=counts), None, counts
        except failures as exc:
            why = str(exc) if isinstance(exc, ImageFetchError) else \
                f"fetch failed: {type(exc).__name__}: {str(exc)[:200]}"
            return key, None, why, counts

    paths, failed, total = {}, {}, Counter()
    with ThreadPoolExecutor(max_workers=max(1, int(settings.get("XMODAL_LS_PARALLEL")))) as pool:
        for key, path, why, counts in pool.map(one, urls.items()):
            total.update(counts)
            if path is None:
                failed[key] = why
            else:
                paths[key] = path
    return paths, failed, total


# -- where a URL may be fetched from -----------------------------------------------------------

def _origin_of(url: str) -> str:
    o = origin(url)
    if o is None:
        raise ImageFetchError(f"the Label Studio URL {_shown(url)} is not a plain http(s) URL")
    scheme, host, port = o
    return f"{scheme}://{'[' + host + ']' if ':' in host else host}:{port}"


def _path_on(ls_url: str, url: str, base: str) -> str:
    """The path (with its query) to ask the client for, or ImageFetchError when ``url`` is not
    on the configured Label Studio (nothing is fetched then)."""
    url = url.replace(" ", "%20")     # a path typed into a task (local files) may hold spaces
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url) or "\\" in url:
        raise ImageFetchError(f"{_shown(url)}: refused, a URL with control characters or a backslash")
    if url.startswith("/") and not url.startswith("//"):
        absolute = base + url
    elif re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", url) or url.startswith("//"):
        absolute = url
    else:
        raise ImageFetchError(f"{_shown(url)}: refused, not a URL Label Studio serves (a path on it "
                              "starts with /, e.g. /data/upload/...)")
    if origin(absolute) != origin(ls_url):
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        hint = (" (a cloud-storage URI Label Studio did not resolve: add the storage to the project "
                "in Label Studio)" if scheme in ("s3", "gs", "azure-blob", "azure-spi") else "")
        if not hint and re.match(r"/(data/|tasks/\d+/resolve/|projects/\d+/resolve/)",
                                 urllib.parse.urlsplit(absolute).path):
            hint = (" (if that is your Label Studio under another name, e.g. its LABEL_STUDIO_HOST, "
                    "use that URL: --label-studio-url or LABEL_STUDIO_URL)")
        raise ImageFetchError(f"{_shown(url)}: refused, it is not on the configured Label Studio "
                              f"({ls_url}); the API key and the request go nowhere else{hint}")
    parts = urllib.parse.urlsplit(absolute)
    path = parts.path or "/"
    prefix = urllib.parse.urlsplit(ls_url).path.rstrip("/")
    if prefix and (path == prefix or path.startswith(prefix + "/")):
        path = path[len(prefix):] or "/"      # the client puts its own base path back
    if path.startswith(_NOT_FILES) or "/../" in path + "/":
        # a GET there can act (/api/projects/<id>/next/ locks a task for the key's user)
        raise ImageFetchError(f"{_shown(url)}: refused, Label Studio's API or account pages, not a file")
    return path + (f"?{parts.query}" if parts.query else "")


def _shown(url: str, n: int = 200) -> str:
    """A URL for a message: a data: URL by its head only, never a query (it may be signed)."""
    if url.startswith("data:"):
        return url[:40] + "..."
    return repr(url.split("?", 1)[0][:n] + ("?..." if "?" in url else ""))


# -- what is kept --------------------------------------------------------------------------------

def _inline(url: str) -> bytes:
    payload = url.split(",", 1)[1]
    if len(payload) > (max_image_bytes() + 2) // 3 * 4 + 4:
        raise ImageFetchError(f"an inline image larger than {max_image_bytes()} bytes "
                              "(XMODAL_MAX_IMAGE_BYTES); not kept")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageFetchError("an inline data: image that is not valid base64") from None


def _extension(content: bytes, shown: str) -> str:
    """The file extension of an image within the pixel limit (its header only is read)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(content)) as img:
            width, height, fmt = img.width, img.height, img.format
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        raise ImageFetchError(f"{shown}: not an image (unknown or broken format)") from None
    if width * height > max_image_pixels():
        raise ImageFetchError(f"{shown}: {width}x{height} pixels, more than {max_image_pixels()} "
                              "(XMODAL_MAX_IMAGE_PIXELS); not kept")
    if fmt not in _EXT:
        raise ImageFetchError(f"{shown}: a {fmt} image, not one of {', '.join(sorted(_EXT))}")
    return _EXT[fmt]


def _name(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _cached(root: Path, key: str) -> Path | None:
    name = _name(key)
    for path in (root / name[:2]).glob(f"{name}.*"):
        if path.suffix in _EXT.values() and path.stat().st_size <= max_image_bytes():
            return path
    return None


def _keep(root: Path, key: str, content: bytes, url: str = "an inline image") -> Path:
    if len(content) > max_image_bytes():
        raise ImageFetchError(f"{_shown(url)}: larger than {max_image_bytes()} bytes "
                              "(XMODAL_MAX_IMAGE_BYTES); not kept")
    name = _name(key)
    path = root / name[:2] / f"{name}{_extension(content, _shown(url))}"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, content)
    return path


__all__ = ["ImageFetchError", "cache_root", "fetch_image"]
