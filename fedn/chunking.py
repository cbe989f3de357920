"""Splitting payloads into chunks and assembling them back, with bounds and a digest."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np

from fedn.errors import ChecksumMismatch, InvalidModel, PayloadTooLarge

__all__ = ["DEFAULT_CHUNK_BYTES", "ChunkAssembler", "ChunkSpool", "iter_chunks"]

DEFAULT_CHUNK_BYTES = 512 * 1024


def iter_chunks(data: bytes | bytearray | memoryview, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[bytes]:
    """Yield consecutive slices of ``data`` of at most ``chunk_bytes`` (the last may be shorter)."""
    if chunk_bytes <= 0:
        raise ValueError("chunk_bytes must be positive")
    view = memoryview(data)
    for start in range(0, len(view), chunk_bytes):
        yield bytes(view[start : start + chunk_bytes])


class _Receiver:
    """What every receiver of an announced payload checks: its size bound, overrun, underrun, digest."""

    def __init__(self, expected_bytes: int, sha256: str, max_bytes: int | None) -> None:
        if expected_bytes < 0:
            raise InvalidModel("negative payload size")
        if max_bytes is not None and expected_bytes > max_bytes:
            raise PayloadTooLarge(f"payload of {expected_bytes} bytes exceeds the limit of {max_bytes} bytes")
        self._expected = expected_bytes
        self._expected_sha = sha256.lower()
        self._digest = hashlib.sha256()
        self._filled = 0

    @property
    def filled(self) -> int:
        return self._filled

    def _accept(self, chunk: bytes) -> int:
        end = self._filled + len(chunk)
        if end > self._expected:
            raise PayloadTooLarge(f"stream sent more than the announced {self._expected} bytes")
        self._digest.update(chunk)
        return end

    def _check_complete(self) -> None:
        if self._filled != self._expected:
            raise InvalidModel(f"stream ended after {self._filled} of {self._expected} bytes")
        if self._digest.hexdigest() != self._expected_sha:
            raise ChecksumMismatch("payload sha256 does not match its header")


class ChunkAssembler(_Receiver):
    """Collects chunks into one preallocated buffer of a size announced up front.

    Rejects (before allocating) a payload over ``max_bytes``, and rejects a
    stream that overruns or underruns its announced size or its sha256.
    """

    def __init__(self, expected_bytes: int, sha256: str, max_bytes: int | None = None) -> None:
        super().__init__(expected_bytes, sha256, max_bytes)
        # uninitialised (no zero-filling of a large model): finish() refuses it unless every byte was written
        self._buffer = memoryview(np.empty(expected_bytes, dtype=np.uint8)).cast("B")

    def add(self, chunk: bytes) -> memoryview:
        """Append ``chunk``; returns a view of where it landed in the buffer."""
        end = self._accept(chunk)
        self._buffer[self._filled : end] = chunk
        view = self._buffer[self._filled : end]
        self._filled = end
        return view

    def finish(self) -> memoryview:
        """The whole payload, once complete and matching its digest."""
        self._check_complete()
        return self._buffer


class ChunkSpool(_Receiver):
    """Like :class:`ChunkAssembler`, but the payload goes to an anonymous temporary file in ``directory``.

    A large upload then costs disk, not memory, while it waits to be checked and folded. The file has
    no name (``O_TMPFILE`` where the OS has it): it is gone when closed, or when the process dies.
    """

    def __init__(
        self, expected_bytes: int, sha256: str, max_bytes: int | None = None, directory: str | None = None
    ) -> None:
        super().__init__(expected_bytes, sha256, max_bytes)
        self._file = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 - outlives this call; close() ends it

    def add(self, chunk: bytes) -> None:
        end = self._accept(chunk)
        self._file.write(chunk)
        self._filled = end

    def add_all(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.add(chunk)

    def finish(self) -> BinaryIO:
        """The file holding the whole payload from offset 0, once complete and matching its digest."""
        self._check_complete()
        self._file.flush()
        return self._file

    def close(self) -> None:
        self._file.close()
