"""Which Label Studio hosts may receive the API key: only those the operator configured.

Label Studio's ``/setup`` names a ``hostname`` (its own URL, as the person who connected the
backend typed it), but anyone who can reach the backend can send ``/setup``: a key sent to whatever
URL it names would go to whoever asks. So outgoing calls go only to an origin (scheme, host, port)
equal to one of

- ``$LABEL_STUDIO_URL``;
- ``$XMODAL_LABEL_STUDIO_HOSTS``: comma-separated URLs (``https://ls.example.org``,
  ``http://10.0.0.5:8080``) for a backend serving more than one Label Studio;
- the workspace's ``label_studio.url`` (written by ``xmodal project create --label-studio-url``).

Origins are compared exactly, after normalisation only: scheme and host lower-cased, a trailing
dot and a trailing slash dropped, the default port made explicit, an IP address written the one
canonical way (``[0:0::1]`` is ``[::1]``). Two names of one machine are two origins:
``127.0.0.2`` is not ``127.0.0.1`` (another process can listen there: an adversarial run had the
key sent to one), nor is ``localhost`` (it may resolve to ``::1``, another socket); configure the
URL the way Label Studio names itself, or both. A URL with a user part (``http://u:p@host``), a
backslash or a control character is no origin at all: URL parsers disagree about which host
``http://a:1\\@b:2`` names, and a check that reads one host while the client connects to another
sends the key there.

A ``/setup`` hostname outside them is recorded (:class:`~xmodal.labelstudio.connection.ConnectionRecord`), logged
(``event=ls.untrusted_host``) and shown by ``xmodal status``; nothing is sent there.
"""

from __future__ import annotations

import ipaddress
import urllib.parse

from xmodal import settings

ENV = "XMODAL_LABEL_STUDIO_HOSTS"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> tuple[str, str, int] | None:
    """``("https", "ls.example.org", 443)`` for a URL, None for anything that is not a plain
    http(s) URL (see the module doc)."""
    if not isinstance(url, str):
        return None
    url = url.strip()
    if "\\" in url or any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        return None
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or "@" in parts.netloc:
        return None
    host = parts.hostname.rstrip(".")   # lower-cased and without IPv6 brackets (urllib)
    try:
        host = ipaddress.ip_address(host).compressed
    except ValueError:
        pass
    return parts.scheme, host, port or _DEFAULT_PORTS[parts.scheme]


def configured_urls(label_studio_config: dict | None = None) -> list[str]:
    """The URLs the operator configured (see the module doc)."""
    urls = [(settings.get("LABEL_STUDIO_URL") or "")]
    urls += settings.get(ENV).split(",")
    urls.append((label_studio_config or {}).get("url") or "")
    return [u.strip() for u in urls if u and u.strip()]


def trusted_url(url: str, label_studio_config: dict | None = None) -> str | None:
    """The configured URL with the origin of ``url``, else None. What is kept and called is the
    operator's own string, never the one a request sent: no two parsers get to read it."""
    o = origin(url)
    if o is None:
        return None
    return next((u for u in configured_urls(label_studio_config) if origin(u) == o), None)


def is_trusted(url: str, label_studio_config: dict | None = None) -> bool:
    """Whether ``url`` has the origin of a configured Label Studio."""
    return trusted_url(url, label_studio_config) is not None
