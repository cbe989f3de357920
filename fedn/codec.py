"""Model codec: named numpy arrays to bytes and back, never through pickle.

Two encodings of the same data:

* the *payload*: raw little-endian tensor bytes concatenated in manifest order.
  It is what travels in chunks over gRPC, so a receiver can view or fold each
  chunk without parsing anything.
* the *model file*: safetensors, what the model store keeps and the REST API
  serves. Its data section is exactly a payload, so converting is cheap.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as _st_load
from safetensors.numpy import save as _st_save

from fedn.errors import InvalidModel, NonFiniteValues

__all__ = [
    "ALLOWED_DTYPES",
    "NamedArrays",
    "SpooledTensor",
    "StagedTensor",
    "TensorSpec",
    "check_dtypes",
    "check_finite",
    "check_manifest",
    "decode_model",
    "decode_payload",
    "encode_model",
    "encode_model_chunks",
    "encode_payload",
    "flat_slices",
    "manifest_of",
    "model_header_size",
    "payload_bytes",
    "read_model_header",
    "read_model_metadata",
    "sha256_hex",
    "split_model",
    "spooled_arrays",
]

NamedArrays = dict[str, np.ndarray]

ALLOWED_DTYPES = frozenset({"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"})


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of one tensor; a list of them is a manifest."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * np.dtype(self.dtype).itemsize

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: Mapping) -> TensorSpec:
        return cls(name=str(d["name"]), dtype=str(d["dtype"]), shape=tuple(int(x) for x in d["shape"]))


def _as_array(name: str, value: object) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.name not in ALLOWED_DTYPES:
        raise InvalidModel(f"tensor {name!r} has unsupported dtype {arr.dtype.name}")
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return arr if arr.flags.c_contiguous else arr.copy(order="C")  # keeps 0-d arrays 0-d


def manifest_of(arrays: Mapping[str, np.ndarray]) -> list[TensorSpec]:
    """The manifest of ``arrays``, in their iteration order."""
    return [TensorSpec(name, _dtype_of(a).name, tuple(np.shape(a))) for name, a in arrays.items()]


def _dtype_of(array: object) -> np.dtype:
    dtype = getattr(array, "dtype", None)  # a SpooledTensor has one too: no need to read it
    return dtype if isinstance(dtype, np.dtype) else np.asarray(array).dtype


class StagedTensor:
    """A tensor of a staged update that is read in slices (a file, a compressed payload), never changed."""

    finite: bool = False  # every value was found finite (check_finite)


class SpooledTensor(StagedTensor):
    """A tensor that stays in a file and is read a slice at a time.

    A large update is staged in a temporary file rather than memory; the checks and folds that walk
    it in order (``flat_slices``) then need one slice of memory, not the tensor. ``np.asarray`` reads
    it whole, for code that needs it all at once.
    """

    def __init__(self, file: BinaryIO, offset: int, spec: TensorSpec) -> None:
        self._file = file  # kept open as long as the tensor lives
        self._offset = offset
        self.dtype = np.dtype(spec.dtype)
        self.shape = spec.shape
        self.size = spec.size

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Elements ``start:stop`` of the flattened tensor, into ``out`` if given (else a new array)."""
        out = np.empty(max(0, stop - start), dtype=self.dtype) if out is None else out[: max(0, stop - start)]
        view = memoryview(out).cast("B")
        position, done = self._offset + start * self.dtype.itemsize, 0
        while done < len(view):
            read = os.preadv(self._file.fileno(), [view[done:]], position + done)
            if read == 0:
                raise InvalidModel("a staged update file ended early")
            done += read
        return out

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        whole = self.read(0, self.size).reshape(self.shape)
        return whole if dtype is None else whole.astype(dtype, copy=False)


def check_dtypes(manifest: Iterable[TensorSpec]) -> None:
    """InvalidModel for a tensor whose dtype is not one of :data:`ALLOWED_DTYPES`. Checked before any size
    is computed from a peer's manifest: numpy raises TypeError on a dtype it does not know, and one it does
    (float128, say) is still none of ours."""
    for spec in manifest:
        if spec.dtype not in ALLOWED_DTYPES:
            raise InvalidModel(f"tensor {spec.name!r} has unsupported dtype {spec.dtype}")


def spooled_arrays(manifest: list[TensorSpec], file: BinaryIO, offset: int = 0) -> dict[str, SpooledTensor]:
    """The tensors of a payload written to ``file`` at ``offset``, left there."""
    check_dtypes(manifest)
    out: dict[str, SpooledTensor] = {}
    for spec in manifest:
        out[spec.name] = SpooledTensor(file, offset, spec)
        offset += spec.nbytes
    return out


def flat_slices(array: np.ndarray | SpooledTensor, length: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(start, stop, elements)`` over the flattened ``array`` in pieces of ``length``: an in-memory
    array is viewed, a spooled one read piece by piece into one buffer (so a piece is valid until the
    next one is read). Anything with its own ``flat_slices`` (a compressed update's lazy tensor,
    fedn.compression.CompressedTensor) is sliced by it, decoding one piece at a time."""
    if not isinstance(array, np.ndarray) and hasattr(array, "flat_slices"):
        yield from array.flat_slices(length)
        return
    if isinstance(array, SpooledTensor):
        buffer = np.empty(min(length, array.size), dtype=array.dtype)
        for start in range(0, array.size, length):
            stop = min(start + length, array.size)
            yield start, stop, array.read(start, stop, buffer)
        return
    flat = np.asarray(array).reshape(-1)
    for start in range(0, flat.size, length):
        stop = min(start + length, flat.size)
        yield start, stop, flat[start:stop]


def payload_bytes(manifest: list[TensorSpec]) -> int:
    return sum(spec.nbytes for spec in manifest)


def encode_payload(arrays: Mapping[str, np.ndarray]) -> tuple[list[TensorSpec], bytes]:
    """Manifest and raw payload of ``arrays`` (one copy, no pickle)."""
    parts = [_as_array(name, a) for name, a in arrays.items()]
    manifest = [TensorSpec(name, a.dtype.name, a.shape) for name, a in zip(arrays, parts, strict=True)]
    return manifest, b"".join(a.tobytes() for a in parts)


def decode_payload(manifest: list[TensorSpec], payload: bytes | bytearray | memoryview) -> NamedArrays:
    """Zero-copy views of ``payload`` as named arrays; raises InvalidModel on a size mismatch."""
    check_dtypes(manifest)
    expected = payload_bytes(manifest)
    if len(payload) != expected:
        raise InvalidModel(f"payload has {len(payload)} bytes, manifest describes {expected}")
    out: NamedArrays = {}
    offset = 0
    for spec in manifest:
        out[spec.name] = np.frombuffer(payload, dtype=spec.dtype, count=spec.size, offset=offset).reshape(spec.shape)
        offset += spec.nbytes
    return out


def encode_model(arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    """A safetensors file of ``arrays``, with ``metadata`` (strings to strings) in its header if given."""
    if not arrays:
        raise InvalidModel("a model needs at least one tensor")
    return _st_save({name: _as_array(name, a) for name, a in arrays.items()}, metadata=_metadata(metadata))


def _metadata(metadata: Mapping[str, str] | None) -> dict[str, str] | None:
    """The header's ``__metadata__`` map: the format allows strings to strings only."""
    if not metadata:
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise InvalidModel("model metadata maps strings to strings")
    return dict(metadata)


# numpy dtype name -> safetensors dtype code (the format's spelling)
_SAFETENSORS_DTYPES = {
    "float16": "F16",
    "float32": "F32",
    "float64": "F64",
    "int8": "I8",
    "int16": "I16",
    "int32": "I32",
    "int64": "I64",
    "uint8": "U8",
    "bool": "BOOL",
}


_NUMPY_DTYPES = {code: name for name, code in _SAFETENSORS_DTYPES.items()}


def encode_model_chunks(
    arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
) -> Iterator[bytes | memoryview]:
    """The same safetensors file as :func:`encode_model`, as its header and then a zero-copy view of each
    tensor, so a store can write a large model (a float64 partial) without a second copy in memory.
    ``metadata`` (strings to strings) goes in the header's ``__metadata__`` map.

    The safetensors library's writer builds the whole file in memory; its reader checks what this writes.
    """
    if not arrays:
        raise InvalidModel("a model needs at least one tensor")
    header: dict[str, dict] = {}
    if (extra := _metadata(metadata)) is not None:
        header["__metadata__"] = extra  # type: ignore[assignment]
    views: list[memoryview] = []
    offset = 0
    for name, value in arrays.items():
        array = _as_array(name, value)
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[array.dtype.name],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
        views.append(memoryview(array.reshape(-1)).cast("B"))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format aligns the data to 8 bytes
    yield struct.pack("<Q", len(text)) + text
    yield from views


def model_header_size(prefix: bytes | memoryview) -> int:
    """Bytes before the tensor data of a safetensors file, from its first 8 bytes."""
    if len(prefix) < 8:
        raise InvalidModel("not a safetensors model: shorter than its header")
    (header_len,) = struct.unpack("<Q", bytes(prefix[:8]))
    if header_len > 100 << 20:
        raise InvalidModel(f"not a safetensors model: a {header_len}-byte header")
    return 8 + header_len


def read_model_header(prefix: bytes | memoryview) -> tuple[list[TensorSpec], int]:
    """The manifest (in data order) and data size of a safetensors file, from its first
    :func:`model_header_size` bytes; InvalidModel unless the tensors tile the data exactly."""
    try:
        header = json.loads(bytes(prefix[8 : model_header_size(prefix)]))
        header.pop("__metadata__", None)
        entries = sorted(header.items(), key=lambda item: item[1]["data_offsets"][0])
        manifest: list[TensorSpec] = []
        offset = 0
        for name, entry in entries:
            dtype = _NUMPY_DTYPES.get(entry["dtype"])
            if dtype is None:
                raise InvalidModel(f"tensor {name!r} has unsupported dtype {entry['dtype']}")
            spec = TensorSpec(name, dtype, tuple(int(d) for d in entry["shape"]))
            begin, end = (int(x) for x in entry["data_offsets"])
            if begin != offset or end - begin != spec.nbytes:
                raise InvalidModel(f"tensor {name!r} is not where its header says")
            manifest.append(spec)
            offset = end
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InvalidModel(f"not a safetensors model: {exc}") from exc
    if not manifest:
        raise InvalidModel("model has no tensors")
    return manifest, offset


def read_model_metadata(prefix: bytes | memoryview) -> dict[str, str]:
    """The ``__metadata__`` map of a safetensors file ({} if it has none), from its first
    :func:`model_header_size` bytes: no tensor is read or decoded."""
    try:
        header = json.loads(bytes(prefix[8 : model_header_size(prefix)]))
        metadata = header.get("__metadata__") or {}
    except (ValueError, AttributeError) as exc:
        raise InvalidModel(f"not a safetensors model: {exc}") from exc
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise InvalidModel("not a safetensors model: its metadata is not a map of strings")
    return metadata


def split_model(data: bytes) -> tuple[list[TensorSpec], memoryview]:
    """The manifest and wire payload of a safetensors file, without copying its tensors.

    The data section of a safetensors file, read in offset order, is exactly a wire payload; a
    combiner serves a stored global model from it rather than decoding and re-encoding it.
    """
    manifest, size = read_model_header(data)
    payload = memoryview(data)[model_header_size(data) :]
    if len(payload) != size:
        raise InvalidModel(f"model has {len(payload)} data bytes, its header describes {size}")
    return manifest, payload


def _offset_order(data: bytes) -> list[str]:
    """Tensor names in the order their bytes appear in a safetensors file (its loader returns hash order)."""
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    header.pop("__metadata__", None)
    return sorted(header, key=lambda name: header[name]["data_offsets"][0])


def decode_model(data: bytes) -> NamedArrays:
    """Arrays of a safetensors file, in file (offset) order; InvalidModel if it is not one."""
    data = bytes(data)
    try:
        loaded = _st_load(data)
        arrays = {name: loaded[name] for name in _offset_order(data)}
    except (SafetensorError, ValueError, OSError, KeyError, struct.error) as exc:
        raise InvalidModel(f"not a safetensors model: {exc}") from exc
    if not arrays:
        raise InvalidModel("model has no tensors")
    for name, a in arrays.items():
        if a.dtype.name not in ALLOWED_DTYPES:
            raise InvalidModel(f"tensor {name!r} has unsupported dtype {a.dtype.name}")
    return arrays


def check_manifest(expected: list[TensorSpec], got: list[TensorSpec], *, ordered: bool = True) -> None:
    """Raise InvalidModel naming the first difference between two manifests.

    ``ordered`` also requires the same tensor order, as a raw payload does.
    """
    want = {s.name: s for s in expected}
    have = {s.name: s for s in got}
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    if missing or extra:
        raise InvalidModel(f"tensor names differ: missing {missing[:5]}, unexpected {extra[:5]}")
    for spec in expected:
        other = have[spec.name]
        if other.shape != spec.shape:
            raise InvalidModel(f"tensor {spec.name!r} has shape {list(other.shape)}, expected {list(spec.shape)}")
        if other.dtype != spec.dtype:
            raise InvalidModel(f"tensor {spec.name!r} has dtype {other.dtype}, expected {spec.dtype}")
    if ordered and [s.name for s in expected] != [s.name for s in got]:
        raise InvalidModel("tensors are not in the global model's order")


_FINITE_SLICE = 1 << 18  # elements checked at a time: the temporary stays small whatever the tensor


def check_finite(name: str, array: np.ndarray | SpooledTensor) -> None:
    """Raise NonFiniteValues if a float ``array`` holds NaN or Inf.

    A staged tensor (spooled, or decoded from a compressed payload) cannot change once staged, and
    reading it means reading a file or decoding it: one that passed keeps ``finite`` set, so the
    aggregator's own check after the combiner's does not read it again."""
    if isinstance(array, np.ndarray) and array.size <= _FINITE_SLICE:  # the common case, without slicing
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise NonFiniteValues(f"tensor {name!r} contains NaN or Inf")
        return
    if _dtype_of(array).kind != "f" or getattr(array, "finite", False):
        return
    for _, _, part in flat_slices(array, _FINITE_SLICE):
        if not np.isfinite(part).all():
            raise NonFiniteValues(f"tensor {name!r} contains NaN or Inf")
    if isinstance(array, StagedTensor):
        array.finite = True


def sha256_hex(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()
