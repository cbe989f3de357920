"""The receiving side of :mod:`fedn.compression`: a compressed payload's layout checked without
decoding it, and its tensors read lazily (:class:`CompressedTensor`), one slice at a time, as a
combiner folds them. :func:`fedn.compression.decode_update` builds them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from fedn.codec import StagedTensor, TensorSpec, check_dtypes
from fedn.compression_format import (
    Compression,
    block_width,
    compressed_payload_bytes,
    compressible,
    scale_count,
    topk_count,
)
from fedn.errors import InvalidArgument, InvalidModel, NonFiniteValues

__all__ = ["CompressedTensor", "as_buffer", "check_payload_length", "int8_dequantize", "payload_sections"]

_SCALE_MAX = np.float32(np.finfo(np.float32).max / 127)


def int8_dequantize(scales: np.ndarray, codes: np.ndarray, block: int, start: int = 0) -> np.ndarray:
    """float32 values of ``codes`` (elements ``start:start + len(codes)`` of a tensor) given the
    tensor's ``scales`` (from the one covering ``start`` on)."""
    n = codes.size
    if n == 0:
        return np.empty(0, np.float32)
    if block == 0:
        return codes.astype(np.float32) * scales[0]
    first = start // block
    per_element = np.repeat(scales[first : -(-(start + n) // block)], block)
    offset = start - first * block
    return codes.astype(np.float32) * per_element[offset : offset + n]


def as_buffer(payload: bytes | bytearray | memoryview | np.ndarray) -> bytes | bytearray | memoryview | np.ndarray:
    """``payload`` itself, once an array (a spool file's memory map) is known to be flat bytes."""
    if isinstance(payload, np.ndarray) and (
        payload.dtype != np.uint8 or payload.ndim != 1 or not payload.flags.c_contiguous
    ):
        raise InvalidArgument("a compressed payload array must be flat, contiguous uint8")
    return payload


def _payload_length(payload: bytes | bytearray | memoryview | np.ndarray) -> int:
    return payload.nbytes if isinstance(payload, (np.ndarray, memoryview)) else len(payload)


def check_payload_length(payload: object, manifest: Sequence[TensorSpec], c: Compression, what: str) -> None:
    check_dtypes(manifest)
    for spec in manifest:
        if any(d < 0 for d in spec.shape):  # its section would count negative bytes
            raise InvalidModel(f"tensor {spec.name!r} has a negative dimension: {list(spec.shape)}")
    expected = compressed_payload_bytes(manifest, c)
    got = _payload_length(payload)  # type: ignore[arg-type]
    if got != expected:
        raise InvalidModel(f"{what} compressed with {c.text()} should have {expected} bytes, got {got}")


def _view(buffer: object, dtype: str, count: int, offset: int) -> np.ndarray:
    return np.frombuffer(buffer, dtype=dtype, count=count, offset=offset)  # type: ignore[call-overload]


class CompressedTensor(StagedTensor):
    """Reads like the dense update (base + decoded delta), one slice at a time.

    It holds views of the payload and of the base, never a decoded copy, so a fold reads it with
    one slice of scratch memory; ``np.asarray`` (or :meth:`to_numpy`) decodes it whole.
    """

    def __init__(
        self, spec: TensorSpec, c: Compression, sections: tuple[np.ndarray, ...], base: np.ndarray | None
    ) -> None:
        self.dtype = np.dtype(spec.dtype)
        self.shape = spec.shape
        self.size = spec.size
        self.nbytes = spec.nbytes
        self._codec = c.codec if base is not None else "none"
        self._block = block_width(spec.size, c.block)
        self._sections = sections
        self._base = base
        self._compute = np.float64 if self.dtype == np.float64 else np.float32

    def _delta(self, start: int, stop: int) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        if self._codec == "float16":
            return self._sections[0][start:stop]
        if self._codec == "int8":
            scales, codes = self._sections
            return int8_dequantize(scales, codes[start:stop], self._block, start)
        indices, values = self._sections
        lo, hi = np.searchsorted(indices, [start, stop])
        return indices[lo:hi].astype(np.int64) - start, values[lo:hi]

    def _dense(self, start: int, stop: int) -> np.ndarray:
        if self._codec == "none":
            return self._sections[0][start:stop]
        assert self._base is not None
        # a sum beyond the dtype's range becomes inf, which the fold's finiteness check refuses
        with np.errstate(over="ignore"):
            base = self._base[start:stop]
            delta = self._delta(start, stop)
            if isinstance(delta, tuple):
                out = base.astype(self._compute, copy=True)
                positions, values = delta
                out[positions] += values
            else:
                out = np.add(base, delta, dtype=self._compute)
            return out if out.dtype == self.dtype else out.astype(self.dtype)

    def flat_slices(self, n: int) -> Iterator[tuple[int, int, np.ndarray]]:
        """``(start, stop, values)`` over the flattened dense tensor, in its dtype, at most ``n`` per slice."""
        if n <= 0:
            raise InvalidArgument(f"slice length must be positive, got {n}")
        for start in range(0, self.size, n):
            stop = min(start + n, self.size)
            yield start, stop, self._dense(start, stop)

    def to_numpy(self) -> np.ndarray:
        """The whole dense tensor (a new array)."""
        return np.array(self._dense(0, self.size), dtype=self.dtype).reshape(self.shape)

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        whole = self.to_numpy()
        return whole if dtype is None else whole.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"CompressedTensor({self._codec}, dtype={self.dtype.name}, shape={list(self.shape)})"


def payload_sections(buffer: object, offset: int, spec: TensorSpec, c: Compression) -> tuple[np.ndarray, ...]:
    """Views of ``spec``'s section at ``offset``, checked in O(k + blocks) (float16 values: O(n))."""
    name, n = spec.name, spec.size
    if not compressible(spec, c):
        return (_view(buffer, np.dtype(spec.dtype).newbyteorder("<").str, n, offset),)
    if c.codec == "float16":
        values = _view(buffer, "<f2", n, offset)
        if n and int((_view(buffer, "<u2", n, offset) & np.uint16(0x7FFF)).max()) >= 0x7C00:  # exponent all ones
            raise NonFiniteValues(f"tensor {name!r}: its float16 values contain NaN or Inf")
        return (values,)
    if c.codec == "int8":
        blocks = scale_count(n, c.block)
        scales = _view(buffer, "<f4", blocks, offset)
        if not np.isfinite(scales).all():
            raise NonFiniteValues(f"tensor {name!r}: its int8 scales contain NaN or Inf")
        if (scales < 0).any():
            raise InvalidModel(f"tensor {name!r}: an int8 scale is negative")
        if (scales > _SCALE_MAX).any():  # an encoder's scale is max|x| / 127 of finite float32 values
            raise InvalidModel(f"tensor {name!r}: an int8 scale is beyond float32's range / 127")
        return scales, _view(buffer, "<i1", n, offset + 4 * blocks)
    k = topk_count(n, c.ratio)
    indices = _view(buffer, "<u4", k, offset)
    values = _view(buffer, "<f4", k, offset + 4 * k)
    if k and int(indices[-1]) >= n:
        raise InvalidModel(f"tensor {name!r}: a topk index is out of range (>= {n})")
    if k > 1 and not (indices[1:] > indices[:-1]).all():
        raise InvalidModel(f"tensor {name!r}: topk indices are not strictly increasing")
    if not np.isfinite(values).all():
        raise NonFiniteValues(f"tensor {name!r}: its topk values contain NaN or Inf")
    return indices, values
