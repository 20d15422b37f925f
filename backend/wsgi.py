"""``gunicorn backend.wsgi:app`` (what ``xmodal serve`` runs)."""

from __future__ import annotations

import logging

from backend.app import create_app
from xmodal import settings

if not logging.getLogger().handlers:
    logging.basicConfig(level=settings.get("XMODAL_LOG_LEVEL"),
                        format="%(asctime)s %(levelname)s %(name)s %(process)d: %(message)s")

app = create_app()
