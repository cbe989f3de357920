"""Embedded model store: one file per key under a directory, written atomically."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from fedn.errors import InvalidArgument, NotFound, StoreError
from fedn.store.base import ModelStore

__all__ = ["LocalModelStore"]


class LocalModelStore(ModelStore):
    """Blobs as files below ``root``; several processes on one host may share it."""

    def __init__(self, root: str | Path) -> None:
        self._root = Path(root).resolve()
        try:
            self._root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create model directory {self._root}: {exc}") from exc

    def _path(self, key: str) -> Path:
        path = (self._root / key).resolve()
        if not key or not path.is_relative_to(self._root) or path == self._root:
            raise InvalidArgument(f"invalid model key {key!r}")
        return path

    def put(self, key: str, data: bytes | Iterable[bytes]) -> int:
        path = self._path(key)
        chunks = [data] if isinstance(data, bytes | bytearray | memoryview) else data
        size = 0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as fh:
                    for chunk in chunks:
                        fh.write(chunk)
                        size += len(chunk)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise StoreError(f"cannot write model {key!r}: {exc}") from exc
        return size

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"model blob {key!r} not found") from None
        except OSError as exc:
            raise StoreError(f"cannot read model {key!r}: {exc}") from exc

    def iter_chunks(self, key: str, chunk_bytes: int) -> Iterator[bytes]:
        try:
            fh = self._path(key).open("rb")
        except FileNotFoundError:
            raise NotFound(f"model blob {key!r} not found") from None
        except OSError as exc:
            raise StoreError(f"cannot read model {key!r}: {exc}") from exc
        with fh:
            while chunk := fh.read(chunk_bytes):
                yield chunk

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            raise NotFound(f"model blob {key!r} not found") from None
        except OSError as exc:
            raise StoreError(f"cannot delete model {key!r}: {exc}") from exc
