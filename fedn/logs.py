"""Logging set-up shared by every service: one line per event, ids in the message."""

from __future__ import annotations

import logging
import sys

__all__ = ["configure_logging"]

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def configure_logging(level: str = "INFO", *, service: str | None = None) -> None:
    """Log to stderr at ``level``; ``service`` prefixes every line (useful when processes share a terminal)."""
    fmt = f"%(asctime)s %(levelname)-7s [{service}] %(name)s: %(message)s" if service else _FORMAT
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt, datefmt="%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("waitress", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
