"""HTTP basic auth, on when both ``BASIC_AUTH_USER`` and ``BASIC_AUTH_PASS`` are set.

Label Studio sends the credentials configured on the ML backend connection ("Use basic auth").
``/health`` stays open so that load balancers and Label Studio's connection check work.
"""

from __future__ import annotations

import hmac

from flask import Request

OPEN_PATHS = frozenset({"/health"})


def credentials(config) -> tuple[str, str] | None:
    user, password = config.get("BASIC_AUTH_USER"), config.get("BASIC_AUTH_PASS")
    return (user, password) if user and password else None


def authorized(request: Request, creds: tuple[str, str] | None) -> bool:
    if creds is None or request.path in OPEN_PATHS:
        return True
    try:
        auth = request.authorization
    except (ValueError, UnicodeError):  # werkzeug's parser raises on non-ASCII base64
        return False
    if auth is None or auth.type != "basic" or auth.username is None or auth.password is None:
        return False
    user_ok = hmac.compare_digest(auth.username.encode(), creds[0].encode())
    pass_ok = hmac.compare_digest(auth.password.encode(), creds[1].encode())
    return user_ok and pass_ok
