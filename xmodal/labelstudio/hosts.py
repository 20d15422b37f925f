"""Which Label Studio hosts may receive the API key: only those the operator configured.

Label Studio's ``/setup`` names a ``hostname`` (its own URL, as the person who connected the
backend typed it), but anyone who can reach the backend can send ``/setup``: a key sent to whatever
URL it names would go to whoever asks. So outgoing calls go only to an origin (scheme, host, port;
the names of this machine, ``localhost`` / ``127.0.0.1`` / ``::1``, count as one host) of

- ``$LABEL_STUDIO_URL``;
- ``$XMODAL_LABEL_STUDIO_HOSTS``: comma-separated URLs (``https://ls.example.org``,
  ``http://10.0.0.5:8080``) for a backend serving more than one Label Studio;
- the workspace's ``label_studio.url`` (written by ``xmodal project create --label-studio-url``).

A ``/setup`` hostname outside them is recorded (``P:{p}:ls`` ``refused_url``), logged
(``event=ls.untrusted_host``) and shown by ``xmodal status``; nothing is sent there.
"""

from __future__ import annotations

import ipaddress
import os
import urllib.parse

ENV = "XMODAL_LABEL_STUDIO_HOSTS"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> tuple[str, str, int] | None:
    """``("https", "ls.example.org", 443)`` for a URL, None for anything that is not http(s)."""
    if not isinstance(url, str):
        return None
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    host = parts.hostname.lower().rstrip(".")
    return parts.scheme, LOOPBACK if _is_loopback(host) else host, port or _DEFAULT_PORTS[parts.scheme]


LOOPBACK = "loopback"


def _is_loopback(host: str) -> bool:
    """``localhost``, ``127.x.x.x``, ``::1``: this machine, so the same port on any of them is the
    same server (Label Studio names itself ``localhost`` to a backend configured with
    ``127.0.0.1``, seen by a new user). Not ``*.localhost``: a resolver may send those to DNS, and
    the name comes from whoever sent /setup."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def configured_urls(label_studio_config: dict | None = None) -> list[str]:
    """The URLs the operator configured (see the module doc)."""
    urls = [os.environ.get("LABEL_STUDIO_URL", "")]
    urls += os.environ.get(ENV, "").split(",")
    urls.append((label_studio_config or {}).get("url") or "")
    return [u.strip() for u in urls if u and u.strip()]


def is_trusted(url: str, label_studio_config: dict | None = None) -> bool:
    """Whether ``url`` has the origin of a configured Label Studio."""
    o = origin(url)
    return o is not None and any(o == origin(u) for u in configured_urls(label_studio_config))


def refuse(redis_client, project: str, url: str, where: str) -> None:
    """Record and log a Label Studio URL that is not configured (nothing is sent to it)."""
    import logging
    import time

    from xmodal.logfmt import kv
    from xmodal.redis_conn import pkey

    shown = url[:200]
    redis_client.hset(pkey(project, "ls"), mapping={"refused_url": shown, "refused_at": time.time()})
    logging.getLogger(__name__).warning(kv(
        "ls.untrusted_host", project=project, url=shown, where=where,
        fix=f"set LABEL_STUDIO_URL or {ENV} to send the Label Studio API key there"))


def refused(redis_client, project: str) -> str | None:
    """The last refused URL of a project (for ``xmodal status``), if any."""
    from xmodal.redis_conn import pkey

    value = redis_client.hget(pkey(project, "ls"), "refused_url")
    return value.decode(errors="replace") if value else None
