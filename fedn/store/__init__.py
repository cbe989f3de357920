"""State and model stores, chosen by URL.

=====================  ===========================================
``sqlite:///rel.db``   embedded state; ``sqlite:////abs/path.db`` absolute, ``sqlite://:memory:``;
                       ``?synchronous=normal`` trades power-loss durability for speed (default FULL)
``file:///abs/dir``    embedded model store, a local directory (``file://rel/dir`` is relative)
``mongodb://u:p@h/db`` MongoDB state (database defaults to ``fedn``); writes ``w=majority``,
                       ``journal=true`` unless the URL's ``w=`` / ``journal=`` say otherwise
``s3://`` ``minio://`` MinIO / S3 models: ``s3://ACCESS:SECRET@host:port/bucket[?secure=true]``
=====================  ===========================================

A URL may come as a ``SecretStr`` (settings fields that can carry credentials are secret): it is
unwrapped here, at the one place that connects, and printed only through ``redact_url``. MongoDB
URIs are handed to pymongo whole, so seed lists (``h1:27017,h2:27017``), ``replicaSet=`` and
``mongodb+srv://`` work as pymongo documents them.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote, urlparse, urlsplit

from pydantic import SecretStr

from fedn.errors import InvalidArgument
from fedn.store.base import ModelStore, StateStore, StoredObject
from fedn.store.local import LocalModelStore
from fedn.store.sqlite import SQLiteStateStore

if TYPE_CHECKING:
    from fedn.store.mongodb import MongoStateStore
    from fedn.store.s3 import S3ModelStore

__all__ = [
    "LocalModelStore",
    "ModelStore",
    "MongoStateStore",
    "S3ModelStore",
    "SQLiteStateStore",
    "StateStore",
    "StoredObject",
    "open_model_store",
    "open_state_store",
]


# pymongo and minio take a third of a second to import: only a process that opens such a store pays it
_LAZY = {"MongoStateStore": "fedn.store.mongodb", "S3ModelStore": "fedn.store.s3"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _sqlite_path(url: str) -> str:
    """SQLAlchemy's convention: ``sqlite:///rel.db`` is relative, ``sqlite:////abs.db`` absolute."""
    rest = url.split("://", 1)[1].split("?", 1)[0]
    if rest in ("", ":memory:", "/:memory:"):
        return ":memory:"
    return rest[1:] if rest.startswith("/") else rest


def _sqlite_options(url: str) -> dict[str, str]:
    """``?synchronous=normal`` (the one option); InvalidArgument for any other."""
    query = parse_qs(urlsplit(url).query)
    unknown = sorted(set(query) - {"synchronous"})
    if unknown:
        raise InvalidArgument(f"unknown SQLite URL option {', '.join(unknown)} (only synchronous=...)")
    return {name: values[-1] for name, values in query.items()}


def _file_path(url: str) -> str:
    """``file:///abs/dir`` is absolute; ``file://rel/dir`` is taken relative to the working directory."""
    parsed = urlparse(url)
    return unquote(parsed.netloc + parsed.path)


def _plain(url: str | SecretStr) -> str:
    return url.get_secret_value() if isinstance(url, SecretStr) else url


def _scheme(url: str) -> str:
    """The scheme alone (parsing more of a multi-host URI, its "port", would fail); "" if none.

    Never more than a scheme's characters, so an error that names it cannot show a credential.
    """
    match = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", url)
    return match[1].lower() if match else ""


def open_state_store(url: str | SecretStr) -> StateStore:
    """A state store for ``url``; InvalidArgument for a scheme with no backend."""
    url = _plain(url)
    scheme = _scheme(url)
    if scheme == "sqlite":
        return SQLiteStateStore(_sqlite_path(url), **_sqlite_options(url))
    if scheme in ("mongodb", "mongodb+srv"):
        from fedn.store.mongodb import MongoStateStore

        return MongoStateStore(url)
    raise InvalidArgument(f"unsupported state store URL scheme {scheme!r} (use sqlite:///path or mongodb://...)")


def open_model_store(url: str | SecretStr) -> ModelStore:
    """A model store for ``url``; InvalidArgument for a scheme with no backend."""
    url = _plain(url)
    scheme = _scheme(url)
    if scheme == "file":
        return LocalModelStore(_file_path(url))
    if scheme in ("s3", "minio"):
        from fedn.store.s3 import S3ModelStore

        return S3ModelStore(url)
    raise InvalidArgument(f"unsupported model store URL scheme {scheme!r} (use file:///dir or s3://...)")
