"""Where model blobs live in the model store, and how they are written and read."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping

import numpy as np

from fedn.codec import NamedArrays, decode_payload, encode_model_chunks, manifest_of, split_model
from fedn.records import ModelRecord, new_id
from fedn.store.base import ModelStore

__all__ = ["load_model", "model_key", "partial_key", "round_model_id", "save_model"]


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
