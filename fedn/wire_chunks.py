"""The data chunks of model downloads and update uploads, framed by hand.

A data chunk is a protobuf message with one field, ``ModelChunk.data`` or ``UpdateChunk.data`` (field
2, bytes). Built through protobuf, a chunk's bytes are copied into the message and out of it again at
each end; written and read here as protobuf encodes them (the field's tag, the length as a varint,
the bytes) they are copied once. Any other message (a header, unknown fields, a field given twice)
goes through protobuf as before, so what protobuf would accept or refuse is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedn.v1 import fedn_pb2 as pb

__all__ = ["DataChunk", "model_data_message", "parse_update_chunk"]

_DATA_TAG = b"\x12"  # field 2, length-delimited: ModelChunk.data and UpdateChunk.data alike
_LENGTH_MAX_BYTES = 5  # protobuf reads a length as at most 5 varint bytes and refuses a longer one


def model_data_message(*pieces: bytes | bytearray | memoryview) -> bytes:
    """A serialized data ``ModelChunk`` holding ``pieces`` end to end (a held model's are built once and
    sent to every client as is)."""
    size = sum(memoryview(piece).nbytes for piece in pieces)
    return b"".join((_DATA_TAG, _varint(size), *pieces))


@dataclass(frozen=True, slots=True)
class DataChunk:
    """A data ``UpdateChunk`` read without protobuf: ``data`` views the bytes gRPC handed over."""

    data: memoryview


def parse_update_chunk(raw: bytes) -> DataChunk | pb.UpdateChunk:
    """An UploadUpdate request message: one data field as a view of ``raw``, anything else parsed by
    protobuf (which raises DecodeError on malformed bytes)."""
    if raw[:1] == _DATA_TAG:
        length, start = _read_varint(raw, 1)
        if length >= 0 and start + length == len(raw):
            return DataChunk(memoryview(raw)[start:])
    return pb.UpdateChunk.FromString(raw)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(raw: bytes, at: int) -> tuple[int, int]:
    """The length varint at ``raw[at:]`` and the index after it; (-1, at) if it is cut short or too long."""
    value, shift = 0, 0
    for index in range(at, min(len(raw), at + _LENGTH_MAX_BYTES)):
        byte = raw[index]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, index + 1
        shift += 7
    return -1, at
