"""Splitting payloads into chunks and assembling them back, with bounds and a digest."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np

from fedn.errors import ChecksumMismatch, InvalidModel, PayloadTooLarge

__all__ = ["DEFAULT_CHUNK_BYTES", "ChunkAssembler", "iter_chunks"]

DEFAULT_CHUNK_BYTES = 1024 * 1024


def iter_chunks(data: bytes | bytearray | memoryview, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[bytes]:
    """Yield consecutive slices of ``data`` of at most ``chunk_bytes`` (the last may be shorter)."""
    if chunk_bytes <= 0:
        raise ValueError("chunk_bytes must be positive")
    view = memoryview(data)
    for start in range(0, len(view), chunk_bytes):
        yield bytes(view[start : start + chunk_bytes])


class ChunkAssembler:
    """Collects chunks into one preallocated buffer of a size announced up front.

    Rejects (before allocating) a payload over ``max_bytes``, and rejects a
    stream that overruns or underruns its announced size or its sha256.
    """

    def __init__(self, expected_bytes: int, sha256: str, max_bytes: int | None = None) -> None:
        if expected_bytes < 0:
            raise InvalidModel("negative payload size")
        if max_bytes is not None and expected_bytes > max_bytes:
            raise PayloadTooLarge(f"payload of {expected_bytes} bytes exceeds the limit of {max_bytes} bytes")
        # uninitialised (no zero-filling of a large model): finish() refuses it unless every byte was written
        self._buffer = memoryview(np.empty(expected_bytes, dtype=np.uint8)).cast("B")
        self._expected_sha = sha256.lower()
        self._digest = hashlib.sha256()
        self._filled = 0

    @property
    def filled(self) -> int:
        return self._filled

    def add(self, chunk: bytes) -> memoryview:
        """Append ``chunk``; returns a view of where it landed in the buffer."""
        end = self._filled + len(chunk)
        if end > len(self._buffer):
            raise PayloadTooLarge(f"stream sent more than the announced {len(self._buffer)} bytes")
        self._buffer[self._filled : end] = chunk
        self._digest.update(chunk)
        view = self._buffer[self._filled : end]
        self._filled = end
        return view

    def finish(self) -> memoryview:
        """The whole payload, once complete and matching its digest."""
        if self._filled != len(self._buffer):
            raise InvalidModel(f"stream ended after {self._filled} of {len(self._buffer)} bytes")
        if self._digest.hexdigest() != self._expected_sha:
            raise ChecksumMismatch("payload sha256 does not match its header")
        return self._buffer
