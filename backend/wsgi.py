"""``gunicorn backend.wsgi:app`` (what ``xmodal serve`` runs)."""

from __future__ import annotations

import logging
import os

from backend.app import create_app

if not logging.getLogger().handlers:
    logging.basicConfig(level=os.environ.get("XMODAL_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s %(process)d: %(message)s")

app = create_app()
