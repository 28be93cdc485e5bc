"""One logging setup for web and worker: key=value lines on stdout, every one redacted."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

from bridge.redact import RedactingFormatter, register_secrets

FORMAT = "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"


def configure(level: str = "INFO", secrets: Iterable[str | None] = ()) -> None:
    """Send every log line to stdout at ``level``, masking ``secrets`` (idempotent).

    RQ and the libraries log through the root logger, so this handler, and its
    redaction (``bridge/redact.py``), covers their lines too.
    """
    register_secrets(secrets)
    root = logging.getLogger()
    if not any(getattr(h, "_bridge", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(RedactingFormatter(FORMAT))
        handler._bridge = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
