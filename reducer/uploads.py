"""Model uploads, streamed: the body goes to a temporary file a chunk at a time, is checked there (its
safetensors header, its size, every float finite, a slice at a time) and copied into the model store,
so an upload of a 1 GiB model costs a few MiB of memory, not the model twice over (issue 15).

What is stored is the upload's tensor data under a header rewritten in data order without the
``__metadata__`` map: the client chooses the tensors, never what the reducer reads from a header.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Iterator
from typing import BinaryIO

from fedn.codec import check_finite, model_header_size, read_model_header, spooled_arrays
from fedn.errors import InvalidModel, PayloadTooLarge
from fedn.models import model_key
from fedn.records import ModelRecord, new_id
from fedn.store.base import ModelStore

__all__ = ["receive_model"]

_CHUNK = 1 << 20


def receive_model(stream: BinaryIO, max_bytes: int, models: ModelStore) -> ModelRecord:
    """Read a safetensors model from ``stream`` (at most ``max_bytes``), check it and store it under a
    new id; the record is returned, not yet in the state store. InvalidModel, NonFiniteValues or
    PayloadTooLarge otherwise, with nothing stored."""
    with tempfile.TemporaryFile(prefix="fedn-upload-") as spool:
        size = _spool(stream, spool, max_bytes)
        head = _pread(spool, 0, min(size, 8))
        header_size = model_header_size(head)
        if header_size > size:
            raise InvalidModel(f"not a safetensors model: a {header_size}-byte header in a {size}-byte file")
        head = _pread(spool, 0, header_size)
        manifest, data_size = read_model_header(head)
        if header_size + data_size != size:
            raise InvalidModel(f"the file has {size} bytes; its header describes {header_size + data_size}")
        for name, tensor in spooled_arrays(manifest, spool, header_size).items():
            check_finite(name, tensor)
        model_id = new_id()
        key = model_key(model_id)
        digest = hashlib.sha256()

        def chunks() -> Iterator[bytes]:
            for chunk in _stored_file(head, spool, header_size, size):
                digest.update(chunk)
                yield chunk

        stored = models.put(key, chunks())
    return ModelRecord(
        id=model_id,
        key=key,
        sha256=digest.hexdigest(),
        size_bytes=stored,
        num_parameters=sum(spec.size for spec in manifest),
        tensors=[spec.to_dict() for spec in manifest],
    )


def _spool(stream: BinaryIO, spool: BinaryIO, max_bytes: int) -> int:
    size = 0
    while chunk := stream.read(_CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"a model upload is at most {max_bytes} bytes")
        spool.write(chunk)
    spool.flush()
    return size


def _pread(file: BinaryIO, offset: int, length: int) -> bytes:
    parts, done = [], 0
    while done < length:
        part = os.pread(file.fileno(), length - done, offset + done)
        if not part:
            break
        parts.append(part)
        done += len(part)
    return b"".join(parts)


def _stored_file(head: bytes, spool: BinaryIO, header_size: int, size: int) -> Iterator[bytes]:
    """The header without ``__metadata__``, its tensors in data order, then the data as uploaded."""
    header = json.loads(head[8:header_size])
    header.pop("__metadata__", None)
    entries = sorted(header.items(), key=lambda item: int(item[1]["data_offsets"][0]))
    clean = {
        name: {
            "dtype": entry["dtype"],
            "shape": [int(d) for d in entry["shape"]],
            "data_offsets": [int(x) for x in entry["data_offsets"]],
        }
        for name, entry in entries
    }
    text = json.dumps(clean, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format aligns the data to 8 bytes
    yield struct.pack("<Q", len(text)) + text
    offset = header_size
    while offset < size:
        chunk = _pread(spool, offset, min(_CHUNK, size - offset))
        if not chunk:
            raise InvalidModel("the uploaded file ended early")
        offset += len(chunk)
        yield chunk
