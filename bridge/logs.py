"""One logging setup for web and worker: key=value lines on stdout."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"


def configure(level: str = "INFO") -> None:
    """Send every log line to stdout at ``level`` (idempotent)."""
    root = logging.getLogger()
    if not any(getattr(h, "_bridge", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter(FORMAT))
        handler._bridge = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
