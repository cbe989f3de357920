"""Compressed model updates (uplink) and compressed global models (downlink).

An update travels as the *delta* of the client's trained parameters from the model it received, so
the lossy codecs spend their precision on what changed. Floating-point tensors (float16, float32,
float64) are compressed; tensors of other dtypes (counters, masks) are carried raw, whole. The
payload is one section per tensor, in manifest order, whose size depends only on the tensor's spec and
the :class:`Compression`, so a receiver checks the length before reading anything. Little endian.

Codec      section of an n-element float tensor         bytes/param   error bound per element
-------    -----------------------------------------   -----------   --------------------------------
none       the raw tensor (fedn.codec's payload)        itemsize      exact
float16    n float16 values of the delta                2             relative <= 2**-11 for
                                                                      |x| >= 2**-14; absolute <= 2**-25
                                                                      below (float16 subnormals)
int8       ceil(n / block) float32 scales, n int8       1 + 4/block   |err| <= scale = max|x|/127 of
           values; value = q * scale                                  its block (stochastic rounding,
                                                                      unbiased); <= scale/2 (nearest)
topk       k = max(1, ceil(ratio * n)) uint32 indices   8 * ratio     exact on the k entries of largest
           (strictly increasing), then k float32 values               |x|; a dropped entry loses itself

``x`` is the delta plus, with error feedback, what compression lost the time before (the client's
*residual*), so nothing is lost for good, only delayed. Top-k's ``momentum`` adds a client velocity
(Deep Gradient Compression's momentum correction, see :func:`encode_update`). A float16 delta
beyond float16's range (|x| > 65504) is refused with InvalidArgument naming the tensor rather than
clipped: such a delta means training diverged, and clipping would hide it. An empty tensor has an
empty section.

The global model goes down whole (not as a delta) and deterministically (int8 rounds to nearest), so
a combiner computes exactly the model each client received and decodes their deltas against it.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence

import numpy as np

from fedn.codec import TensorSpec
from fedn.compressed_tensor import (
    CompressedTensor,
    as_buffer,
    check_payload_length,
    int8_dequantize,
    payload_sections,
)
from fedn.compression_format import (
    CODECS,
    Compression,
    block_width,
    check_downlink,
    compressed_payload_bytes,
    compressible,
    downlink_payload_bytes,
    parse_compression,
    scale_count,
    section_bytes,
    topk_count,
)
from fedn.errors import InvalidArgument, InvalidModel, NonFiniteValues

__all__ = [
    "CODECS",
    "CompressedTensor",
    "Compression",
    "compressed_payload_bytes",
    "decode_model_downlink",
    "decode_update",
    "downlink_payload_bytes",
    "encode_model_downlink",
    "encode_update",
    "parse_compression",
    "section_bytes",
]

_FLOAT16_MAX = float(np.finfo(np.float16).max)
_INDEX_LIMIT = 1 << 32  # topk indices are uint32


# --- encoding -------------------------------------------------------------------------------------


def _int8_quantize(
    name: str, x: np.ndarray, block: int, rng: np.random.Generator | None, feedback: bool
) -> list[bytes]:
    """The int8 section of flat float32 ``x`` (stochastic rounding with ``rng``, else nearest); with
    ``feedback`` ``x`` becomes what the section loses (x - decoded)."""
    n = x.size
    if n == 0:
        return []
    block = block_width(n, block)
    width = n if block == 0 else block
    blocks = scale_count(n, block)
    if blocks * width == n:
        grid = x.reshape(blocks, width)
    else:  # a short last block: pad with zeros, which change neither its scale nor the codes kept
        grid = np.zeros((blocks, width), dtype=np.float32)
        grid.reshape(-1)[:n] = x
    scales = np.maximum(grid.max(axis=1), -grid.min(axis=1)) / np.float32(127)  # max|x| without an |x| copy
    if not np.isfinite(scales).all():
        raise NonFiniteValues(f"tensor {name!r} contains NaN or Inf")
    # divide rather than multiply by 1 / scale: below ~3.7e-37 that inverse overflows to inf, which
    # made every code of the block ±127 (and 0 * inf a NaN code); an all-zero block divides by 1
    q = np.divide(grid, np.where(scales > 0, scales, np.float32(1))[:, None])
    if rng is not None:
        q += rng.random(q.shape, dtype=np.float32)  # floor(q + u) has mean q: the rounding is unbiased
        np.floor(q, out=q)
    else:
        np.rint(q, out=q)
    np.clip(q, -127, 127, out=q)
    codes = q.astype(np.int8)
    if feedback:
        np.multiply(codes, scales[:, None], out=q)  # what the receiver decodes
        x -= q.reshape(-1)[:n]
    return [scales.astype("<f4").tobytes(), codes.reshape(-1)[:n].tobytes()]


def _encode_section(
    name: str,
    x: np.ndarray,
    c: Compression,
    rng: np.random.Generator | None,
    feedback: bool,
    velocity: np.ndarray | None = None,
) -> list[bytes]:
    """The bytes of flat float32 ``x``'s section; with ``feedback`` ``x`` becomes what they lose, and a
    top-k ``velocity`` is zeroed where an entry is sent (momentum factor masking)."""
    if c.codec == "float16":
        # max and min propagate NaN, and the comparisons fail on it (cheaper than isfinite on float16)
        if x.size and not (float(x.max()) <= _FLOAT16_MAX and float(x.min()) >= -_FLOAT16_MAX):
            if not np.isfinite(x).all():
                raise NonFiniteValues(f"tensor {name!r} contains NaN or Inf")
            raise InvalidArgument(
                f"tensor {name!r} has a value of magnitude {float(np.abs(x).max()):.4g}, beyond float16's "
                f"range (±{_FLOAT16_MAX:g}); use int8 or no compression"
            )
        half = x.astype("<f2")
        if feedback:
            x -= half
        return [half.tobytes()]
    if c.codec == "int8":
        return _int8_quantize(name, x, c.block, rng if c.stochastic else None, feedback)
    # topk: the k entries of largest magnitude, indices ascending (NaN and Inf sort as largest, so
    # checking the kept values finds them)
    n = x.size
    if n >= _INDEX_LIMIT:
        raise InvalidArgument(f"tensor {name!r} has {n} elements; topk indexes at most {_INDEX_LIMIT - 1}")
    k = topk_count(n, c.ratio)
    if k == n:
        indices = np.arange(n, dtype=np.uint32)
    else:
        indices = np.sort(np.argpartition(np.abs(x), n - k)[n - k :]).astype(np.uint32)
    values = x[indices]
    if not np.isfinite(values).all():
        raise NonFiniteValues(f"tensor {name!r} contains NaN or Inf")
    if feedback:
        x[indices] = 0  # the kept entries arrive exactly; the rest is the residual
    if velocity is not None:
        velocity[indices] = 0  # what was sent stops pushing its entry (DGC's momentum factor masking)
    return [indices.astype("<u4").tobytes(), values.astype("<f4").tobytes()]


def _flat(name: str, arrays: Mapping[str, np.ndarray], spec: TensorSpec, what: str) -> np.ndarray:
    if name not in arrays:
        raise InvalidModel(f"{what} has no tensor {name!r}")
    array = np.asarray(arrays[name])
    if tuple(array.shape) != spec.shape:
        raise InvalidModel(f"{what} tensor {name!r} has shape {list(array.shape)}, expected {list(spec.shape)}")
    return array.reshape(-1)


def _raw_bytes(name: str, arrays: Mapping[str, np.ndarray], spec: TensorSpec, what: str) -> bytes:
    return np.ascontiguousarray(_flat(name, arrays, spec, what), dtype=np.dtype(spec.dtype).newbyteorder("<")).tobytes()


def encode_update(
    params: Mapping[str, np.ndarray],
    base: Mapping[str, np.ndarray],
    manifest: Sequence[TensorSpec],
    c: Compression,
    *,
    rng: np.random.Generator,
    residual: MutableMapping[str, np.ndarray] | None = None,
    velocity: MutableMapping[str, np.ndarray] | None = None,
) -> bytes:
    """The compressed payload of the update ``params`` trained from ``base``.

    With ``residual`` and ``c.error_feedback`` it encodes delta + residual[name] and sets
    residual[name] = (delta + old residual) - decoded; entries (float32, the tensor's shape) are
    created as zeros on first use. Without error feedback ``residual`` is left alone.

    With ``c.momentum`` (top-k only) the client's ``velocity`` is kept too: velocity[name] =
    momentum * velocity[name] + delta is what is added to the residual, and both are zeroed where an
    entry is sent. Error feedback alone delays small entries until they add up; the velocity makes an
    entry that keeps moving one way add up sooner, which is how Deep Gradient Compression (Lin et al.,
    ICLR 2018) keeps a 99%-sparse update converging like a dense one.
    """
    parts: list[bytes] = []
    feedback = residual if c.error_feedback else None
    if feedback is not None and c.momentum and velocity is None:
        raise InvalidArgument(f"compression {c.text()} keeps a velocity per client: pass its state")
    for spec in manifest:
        name = spec.name
        if not compressible(spec, c):
            parts.append(_raw_bytes(name, params, spec, "update"))
            continue
        # the delta in the tensor's precision first (a float64 delta would cancel if cast before subtracting)
        wide = np.float64 if spec.dtype == "float64" else np.float32
        x = np.subtract(_flat(name, params, spec, "update"), _flat(name, base, spec, "base model"), dtype=wide)
        x = x.astype(np.float32, copy=False)
        moving = None
        if feedback is not None and velocity is not None and c.momentum:
            moving = _state(velocity, name, spec, "velocity") * np.float32(c.momentum) + x
            x = moving.copy()
        if feedback is not None:
            x += _state(feedback, name, spec, "residual")
        parts.extend(_encode_section(name, x, c, rng, feedback is not None, moving))
        if feedback is not None:
            feedback[name] = x.reshape(spec.shape)
        if moving is not None and velocity is not None:
            velocity[name] = moving.reshape(spec.shape)
    return b"".join(parts)


def _state(states: Mapping[str, np.ndarray], name: str, spec: TensorSpec, what: str) -> np.ndarray:
    """A client's kept state for a tensor, flat float32 (read only: it may be the caller's); zeros the first time."""
    kept = states.get(name)
    if kept is None:
        return np.zeros(spec.size, dtype=np.float32)
    if tuple(np.shape(kept)) != spec.shape:
        raise InvalidArgument(f"{what} of tensor {name!r} has shape {list(np.shape(kept))}")
    return np.asarray(kept, dtype=np.float32).reshape(-1)


def encode_model_downlink(arrays: Mapping[str, np.ndarray], manifest: Sequence[TensorSpec], c: Compression) -> bytes:
    """The global model compressed whole with ``c`` (none, float16, int8 rounding to nearest)."""
    check_downlink(c)
    parts: list[bytes] = []
    for spec in manifest:
        if not compressible(spec, c):
            parts.append(_raw_bytes(spec.name, arrays, spec, "model"))
            continue
        x = np.asarray(_flat(spec.name, arrays, spec, "model"), dtype=np.float32)
        parts.extend(_encode_section(spec.name, x, c, None, False))
    return b"".join(parts)


# --- decoding -------------------------------------------------------------------------------------


def decode_update(
    payload: bytes | bytearray | memoryview | np.ndarray,
    base: Mapping[str, np.ndarray],
    manifest: Sequence[TensorSpec],
    c: Compression,
) -> dict[str, CompressedTensor]:
    """Lazy tensors of a compressed update trained from ``base``, after checking its layout.

    The checks: total length (InvalidModel naming expected and got), topk indices strictly increasing
    and in range (InvalidModel), scales and values finite (NonFiniteValues naming the tensor), int8
    scales not negative. ``payload`` may be a uint8 ``np.memmap`` of a spool file. Nothing is decoded
    until read.
    """
    buffer = as_buffer(payload)
    check_payload_length(buffer, manifest, c, "update")
    out: dict[str, CompressedTensor] = {}
    offset = 0
    for spec in manifest:
        sections = payload_sections(buffer, offset, spec, c)
        base_flat = _flat(spec.name, base, spec, "base model") if compressible(spec, c) else None
        out[spec.name] = CompressedTensor(spec, c, sections, base_flat)
        offset += section_bytes(spec, c)
    return out


def decode_model_downlink(
    payload: bytes | bytearray | memoryview | np.ndarray, manifest: Sequence[TensorSpec], c: Compression
) -> dict[str, np.ndarray]:
    """The global model a client receives: each tensor decoded whole, in its manifest dtype."""
    check_downlink(c)
    buffer = as_buffer(payload)
    check_payload_length(buffer, manifest, c, "model")
    out: dict[str, np.ndarray] = {}
    offset = 0
    for spec in manifest:
        sections = payload_sections(buffer, offset, spec, c)
        dtype = np.dtype(spec.dtype)
        if not compressible(spec, c) or c.codec == "float16":
            value = sections[0].astype(dtype)
        else:
            with np.errstate(over="ignore"):
                value = int8_dequantize(sections[0], sections[1], block_width(spec.size, c.block)).astype(dtype)
            # a code of -128 (never encoded), or 127, times a scale at float32's limit / 127 overflows
            if not np.isfinite(value).all():
                raise NonFiniteValues(f"tensor {spec.name!r}: its int8 values decode beyond float32's range")
        out[spec.name] = value.reshape(spec.shape)
        offset += section_bytes(spec, c)
    return out
