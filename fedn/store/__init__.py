"""State and model stores, chosen by URL.

=====================  ===========================================
``sqlite:///path.db``  embedded state (``sqlite://:memory:`` for tests)
``file:///dir``        embedded model store, a local directory
``mongodb://...``      MongoDB state (production backends issue)
``s3://`` ``minio://`` MinIO / S3 models (production backends issue)
=====================  ===========================================
"""

from __future__ import annotations

from urllib.parse import urlparse

from fedn.errors import InvalidArgument
from fedn.store.base import ModelStore, StateStore
from fedn.store.local import LocalModelStore
from fedn.store.sqlite import SQLiteStateStore

__all__ = ["LocalModelStore", "ModelStore", "SQLiteStateStore", "StateStore", "open_model_store", "open_state_store"]


def _path_of(url: str) -> str:
    parsed = urlparse(url)
    path = (parsed.netloc + parsed.path) if parsed.netloc in ("", ":memory:") else parsed.path
    return path or ":memory:"


def open_state_store(url: str) -> StateStore:
    """A state store for ``url``; InvalidArgument for a scheme with no backend."""
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        return SQLiteStateStore(_path_of(url))
    raise InvalidArgument(f"unsupported state store URL scheme {scheme!r} (use sqlite:///path)")


def open_model_store(url: str) -> ModelStore:
    """A model store for ``url``; InvalidArgument for a scheme with no backend."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalModelStore(parsed.path)
    raise InvalidArgument(f"unsupported model store URL scheme {parsed.scheme!r} (use file:///dir)")
