"""A task's image URL -> a local file (xmodal.labelstudio.fetch): only from the configured Label
Studio, within the limits, cached.

"Label Studio" here is a small HTTP server on loopback that serves files the way Label Studio's
``/data/upload/`` does (the real one: tests/test_from_label_studio.py); "another host" is a
listener that records every connection (tests/test_hardening.py). Nothing is mocked in the fetch.
"""

from __future__ import annotations

import base64
import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image
from test_hardening import Listener

from xmodal.labelstudio.client import LabelStudioClient
from xmodal.labelstudio.fetch import ImageFetchError, fetch_image

KEY = "fetch-test-secret-key"


def png(w: int = 8, h: int = 8, color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, format="PNG")
    return buf.getvalue()


class FakeFiles:
    """An HTTP server with routes: path -> (status, headers, body); records each request's path
    and Authorization header."""

    def __init__(self):
        self.routes: dict[str, tuple[int, dict, bytes]] = {}
        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                outer.requests.append((self.path, self.headers.get("Authorization")))
                status, headers, body = outer.routes.get(self.path, (404, {}, b"not found"))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if "Content-Length" not in headers and "Transfer-Encoding" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if headers.get("Transfer-Encoding") == "chunked":
                    for i in range(0, len(body), 1000):
                        part = body[i:i + 1000]
                        self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def ls(monkeypatch):
    files = FakeFiles()
    client = LabelStudioClient(files.url, KEY, timeout=10)
    yield files, client
    client.close()
    files.close()


@pytest.fixture
def listener():
    lst = Listener()
    yield lst
    lst.close()


def test_an_upload_is_fetched_with_the_key_and_cached(ls, tmp_path):
    files, client = ls
    files.routes["/data/upload/1/abc-dog.png"] = (200, {"Content-Type": "image/png"}, png())
    path = fetch_image(client, "/data/upload/1/abc-dog.png", cache_dir=tmp_path)
    assert path.suffix == ".png" and path.read_bytes() == png()
    assert files.requests == [("/data/upload/1/abc-dog.png", f"Token {KEY}")]
    # the absolute form of the same URL on the configured host: same file, nothing fetched again
    assert fetch_image(client, files.url + "/data/upload/1/abc-dog.png", cache_dir=tmp_path) == path
    assert fetch_image(client, "/data/upload/1/abc-dog.png", cache_dir=tmp_path) == path
    assert len(files.requests) == 1


def test_local_files_and_resolve_urls_keep_their_query(ls, tmp_path):
    files, client = ls
    files.routes["/data/local-files/?d=photos/a%20b.png"] = (200, {}, png(color=(1, 2, 3)))
    files.routes["/tasks/7/resolve/?fileuri=czM6Ly9iL2MucG5n"] = (200, {}, png(color=(4, 5, 6)))
    a = fetch_image(client, "/data/local-files/?d=photos/a%20b.png", cache_dir=tmp_path)
    b = fetch_image(client, "/tasks/7/resolve/?fileuri=czM6Ly9iL2MucG5n", cache_dir=tmp_path)
    assert a != b and a.is_file() and b.is_file()


@pytest.mark.parametrize("template", [
    "{other}/x.png",                        # another host
    "{other}/data/upload/1/x.png",
    "//127.0.0.1:{other_port}/x.png",       # scheme-relative: another host
    "http://user@127.0.0.1:{ls_port}/x.png",  # a user part: no origin
    "http://127.0.0.1:{ls_port}\\@127.0.0.1:{other_port}/x.png",
    "http://localhost:{ls_port}/x.png",     # another name of the machine is another origin
    "https://127.0.0.1:{ls_port}/x.png",    # another scheme
    "file:///etc/passwd",
    "s3://bucket/key.png",
    "gs://bucket/key.png",
    "ftp://127.0.0.1:{other_port}/x.png",
    "photos/x.png",                         # a relative path Label Studio does not serve
    "javascript:alert(1)",
    "/data/upload/1/x.png\r\nHost: evil",
    "/api/projects/1/next/",                # on Label Studio, but a GET that acts
    "{ls}/api/current-user/token",
    "/data/upload/../api/projects/",
    "/user/logout",
])
def test_a_url_off_the_configured_host_or_off_its_files_is_refused_and_never_fetched(ls, listener, tmp_path, template):
    files, client = ls
    url = template.format(other=listener.url, other_port=listener.port, ls=files.url,
                          ls_port=files.url.rsplit(":", 1)[1])
    with pytest.raises(ImageFetchError, match="refused"):
        fetch_image(client, url, cache_dir=tmp_path)
    assert listener.connections == 0 and listener.received == b""
    assert files.requests == []          # nor asked of Label Studio
    assert not any(tmp_path.rglob("*.*"))


def test_a_label_studio_url_under_another_name_says_which_url_to_configure(ls, listener, tmp_path):
    files, client = ls
    with pytest.raises(ImageFetchError, match="LABEL_STUDIO_HOST"):
        fetch_image(client, f"{listener.url}/tasks/4/resolve/?fileuri=eA", cache_dir=tmp_path)
    assert listener.connections == 0


def test_a_redirect_to_another_host_is_refused(ls, listener, tmp_path):
    """A cloud storage with pre-signed URLs answers the resolve URL with 303 to its bucket."""
    files, client = ls
    files.routes["/tasks/3/resolve/?fileuri=eA"] = (303, {"Location": listener.url + "/bucket/x.png?sig=1"}, b"")
    files.routes["/data/upload/2/hop.png"] = (302, {"Location": f"//127.0.0.1:{listener.port}/x.png"}, b"")
    for url in ("/tasks/3/resolve/?fileuri=eA", "/data/upload/2/hop.png"):
        with pytest.raises(ImageFetchError, match="another host") as err:
            fetch_image(client, url, cache_dir=tmp_path)
        assert "pre-signed" in str(err.value) and "sig=1" not in str(err.value)
    assert listener.connections == 0 and listener.received == b""


def test_a_redirect_on_the_same_host_is_followed_a_few_times(ls, tmp_path):
    files, client = ls
    files.routes["/a"] = (302, {"Location": "/b"}, b"")
    files.routes["/b"] = (302, {"Location": files.url + "/data/upload/1/c.png"}, b"")
    files.routes["/data/upload/1/c.png"] = (200, {}, png())
    assert fetch_image(client, "/a", cache_dir=tmp_path).read_bytes() == png()
    assert all(auth == f"Token {KEY}" for _, auth in files.requests)
    files.routes["/loop"] = (302, {"Location": "/loop"}, b"")
    with pytest.raises(ImageFetchError, match="redirects"):
        fetch_image(client, "/loop", cache_dir=tmp_path)


@pytest.mark.parametrize("chunked", [False, True])
def test_an_oversize_image_is_refused_with_the_limit_named(ls, tmp_path, monkeypatch, chunked):
    files, client = ls
    monkeypatch.setenv("XMODAL_MAX_IMAGE_BYTES", "5000")
    body = png(400, 400, (0, 0, 0)) + b"\0" * 6000
    files.routes["/data/upload/1/big.png"] = (200, {"Transfer-Encoding": "chunked"} if chunked else {}, body)
    with pytest.raises(ImageFetchError, match="larger than 5000 bytes .XMODAL_MAX_IMAGE_BYTES"):
        fetch_image(client, "/data/upload/1/big.png", cache_dir=tmp_path)
    assert not any(tmp_path.rglob("*.*"))


def test_too_many_pixels_or_no_image_is_refused(ls, tmp_path, monkeypatch):
    files, client = ls
    monkeypatch.setenv("XMODAL_MAX_IMAGE_PIXELS", "100")
    files.routes["/data/upload/1/wide.png"] = (200, {}, png(20, 20))
    files.routes["/data/upload/1/page.png"] = (200, {}, b"<html>login</html>")
    with pytest.raises(ImageFetchError, match="20x20 pixels, more than 100"):
        fetch_image(client, "/data/upload/1/wide.png", cache_dir=tmp_path)
    with pytest.raises(ImageFetchError, match="not an image"):
        fetch_image(client, "/data/upload/1/page.png", cache_dir=tmp_path)
    files.routes["/gone.png"] = (404, {}, b"")
    with pytest.raises(ImageFetchError, match="HTTP 404"):
        fetch_image(client, "/gone.png", cache_dir=tmp_path)
    assert not any(tmp_path.rglob("*.*"))


def test_an_inline_image_is_decoded_here_within_the_limits(ls, tmp_path, monkeypatch):
    files, client = ls
    url = "data:image/png;base64," + base64.b64encode(png()).decode()
    assert fetch_image(client, url, cache_dir=tmp_path).read_bytes() == png()
    monkeypatch.setenv("XMODAL_MAX_IMAGE_BYTES", "50")
    with pytest.raises(ImageFetchError, match="XMODAL_MAX_IMAGE_BYTES"):
        fetch_image(client, "data:image/png;base64," + base64.b64encode(png(64, 64)).decode(),
                    cache_dir=tmp_path / "b")
    with pytest.raises(ImageFetchError, match="base64"):
        fetch_image(client, "data:image/png;base64,@@@", cache_dir=tmp_path / "c")
    assert files.requests == []
