"""Embedded model store: one file per key under a directory, written atomically."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from fedn.errors import InvalidArgument, NotFound, StoreError
from fedn.store.base import ModelStore, StoredObject
from fedn.store.validation import check_key

__all__ = ["LocalModelStore"]


_TMP_PREFIX = ".tmp-"  # a blob being written; renamed to its key when whole


class LocalModelStore(ModelStore):
    """Blobs as files below ``root``; several processes on one host may share it."""

    def __init__(self, root: str | Path) -> None:
        self._root = Path(root).resolve()
        try:
            self._root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create model directory {self._root}: {exc}") from exc

    def _path(self, key: str) -> Path:
        path = (self._root / check_key(key)).resolve()
        if not path.is_relative_to(self._root) or path == self._root:  # through a symbolic link
            raise InvalidArgument(f"invalid model key {key!r}")
        return path

    def put(self, key: str, data: bytes | Iterable[bytes]) -> int:
        path = self._path(key)
        chunks = [data] if isinstance(data, bytes | bytearray | memoryview) else data
        size = 0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TMP_PREFIX)
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
            while True:
                try:
                    chunk = fh.read(chunk_bytes)
                except OSError as exc:
                    raise StoreError(f"cannot read model {key!r}: {exc}") from exc
                if not chunk:
                    return
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

    def list_keys(self, prefix: str = "") -> Iterator[StoredObject]:
        # Walk only below the prefix's folder; keys are compared as strings, as S3 does.
        try:
            start = (self._root / prefix.rpartition("/")[0]).resolve()
        except (OSError, ValueError):  # a NUL byte or a symbolic-link loop: no key lies there
            return iter(())
        if not start.is_relative_to(self._root) or not start.is_dir():
            return iter(())
        found = []
        try:
            for folder, _, names in os.walk(start, onerror=_raise_unless_gone):
                for name in names:
                    if name.startswith(_TMP_PREFIX):
                        continue
                    path = Path(folder, name)
                    key = path.relative_to(self._root).as_posix()
                    if not key.startswith(prefix):
                        continue
                    try:
                        stat = path.stat()
                    except FileNotFoundError:  # deleted while we walked
                        continue
                    found.append(StoredObject(key, stat.st_size, stat.st_mtime))
        except OSError as exc:
            raise StoreError(f"cannot list models under {prefix!r}: {exc}") from exc
        return iter(sorted(found, key=lambda obj: obj.key))


def _raise_unless_gone(exc: OSError) -> None:
    """os.walk's error hook: a folder removed while we walk is simply absent; anything else fails."""
    if not isinstance(exc, FileNotFoundError):
        raise exc
