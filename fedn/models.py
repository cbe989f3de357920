"""Where model blobs live in the model store, and how they are written and read."""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Iterator, Mapping

import numpy as np
from pydantic import ValidationError

from fedn.codec import (
    NamedArrays,
    decode_payload,
    encode_model_chunks,
    manifest_of,
    model_header_size,
    read_model_metadata,
    split_model,
)
from fedn.errors import ChecksumMismatch, InvalidModel, NotFound
from fedn.records import ModelRecord, RoundResult, new_id
from fedn.store.base import ModelStore

__all__ = [
    "load_model",
    "load_verified",
    "model_key",
    "partial_key",
    "partial_metadata",
    "read_metadata",
    "round_model_id",
    "save_model",
    "stored_result",
]

_RESULT = "fedn.round_result"  # the metadata entry of a partial that holds its RoundResult, as JSON
_HEADER_READ_BYTES = 64 << 10


def model_key(model_id: str) -> str:
    return f"models/{model_id}.safetensors"


def partial_key(round_id: str, combiner_id: str) -> str:
    return f"partials/{round_id}/{combiner_id}.safetensors"


def round_model_id(round_id: str) -> str:
    """The id of the global model that round (or async flush) ``round_id`` makes: derived from the
    round's id, so a merge written again after a crash overwrites its model instead of adding one."""
    return hashlib.sha256(f"round-model:{round_id}".encode()).hexdigest()[:16]


def save_model(
    models: ModelStore,
    arrays: Mapping[str, np.ndarray],
    *,
    model_id: str | None = None,
    session_id: str | None = None,
    round_id: str | None = None,
    parent_id: str | None = None,
) -> ModelRecord:
    """Stream ``arrays`` as safetensors into the store, and return its record (not yet in the state store)."""
    model_id = model_id or new_id()
    key = model_key(model_id)
    digest = hashlib.sha256()

    def chunks() -> Iterator[bytes | memoryview]:  # streamed: no encoded copy of the model in memory
        for chunk in encode_model_chunks(arrays):
            digest.update(chunk)
            yield chunk

    size = models.put(key, chunks())
    manifest = manifest_of(arrays)
    return ModelRecord(
        id=model_id,
        key=key,
        sha256=digest.hexdigest(),
        size_bytes=size,
        num_parameters=sum(spec.size for spec in manifest),
        tensors=[spec.to_dict() for spec in manifest],
        session_id=session_id,
        round_id=round_id,
        parent_id=parent_id,
    )


def load_model(models: ModelStore, key: str) -> NamedArrays:
    """The stored model as read-only views of its blob: no decoded copy (a float64 partial is large)."""
    manifest, payload = split_model(models.get(key))
    return decode_payload(manifest, payload)


def load_verified(models: ModelStore, record: ModelRecord) -> NamedArrays:
    """The model of ``record``, read like :func:`load_model` once its blob's sha256 matches the record's.

    The one way the reducer reads a model that has a record: a blob replaced or corrupted in the
    model store (whose write access the combiners share) is refused with ChecksumMismatch.
    """
    blob = models.get(record.key)
    digest = hashlib.sha256(blob).hexdigest()
    if digest != record.sha256:
        raise ChecksumMismatch(
            f"model {record.id}: its blob {record.key!r} has sha256 {digest}, its record says {record.sha256}; "
            "refused (the blob was replaced or corrupted in the model store)"
        )
    manifest, payload = split_model(blob)
    return decode_payload(manifest, payload)


def partial_metadata(result: RoundResult) -> dict[str, str]:
    """What a combiner stores in its partial's header: the RoundResult that describes it (weight, counts,
    clients, failures, metrics), so the partial can be used without the combiner's reply."""
    return {_RESULT: result.model_dump_json()}


def read_metadata(models: ModelStore, key: str) -> dict[str, str]:
    """The metadata map of the stored model at ``key``, read from its header only (no tensor is read)."""
    prefix, need = bytearray(), 8
    with contextlib.closing(models.iter_chunks(key, _HEADER_READ_BYTES)) as chunks:
        for chunk in chunks:
            prefix += chunk
            if len(prefix) >= 8:
                need = model_header_size(prefix)
            if len(prefix) >= need:
                break
    if len(prefix) < need:
        raise InvalidModel(f"stored model {key!r} ends inside its header")
    return read_model_metadata(prefix)


def stored_result(models: ModelStore, round_id: str, combiner_id: str) -> RoundResult | None:
    """The RoundResult stored with ``combiner_id``'s partial of ``round_id``: None if no partial is stored,
    or it was stored without one. InvalidModel if what is stored does not describe that partial (another
    round or combiner, no update, a weight that is not a positive finite number)."""
    key = partial_key(round_id, combiner_id)
    if not models.exists(key):  # the usual answer, without opening a read
        return None
    try:
        text = read_metadata(models, key).get(_RESULT)
    except NotFound:
        return None
    if text is None:
        return None
    try:
        result = RoundResult.model_validate_json(text)
    except ValidationError as exc:
        errors = exc.error_count()
        raise InvalidModel(f"the result stored with partial {key!r} does not validate: {errors} errors") from None
    weight_ok = math.isfinite(result.total_weight) and result.total_weight > 0
    if (result.round_id, result.combiner_id, result.partial_key) != (round_id, combiner_id, key):
        raise InvalidModel(f"the result stored with partial {key!r} describes {result.partial_key!r}")
    if result.num_updates < 1 or not weight_ok:
        raise InvalidModel(
            f"the result stored with partial {key!r} has {result.num_updates} updates, weight {result.total_weight}"
        )
    return result
