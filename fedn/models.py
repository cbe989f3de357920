"""Where model blobs live in the model store, and how they are written and read."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedn.codec import NamedArrays, decode_model, encode_model, manifest_of, sha256_hex
from fedn.records import ModelRecord, new_id
from fedn.store.base import ModelStore

__all__ = ["load_model", "model_key", "partial_key", "save_model"]


def model_key(model_id: str) -> str:
    return f"models/{model_id}.safetensors"


def partial_key(round_id: str, combiner_id: str) -> str:
    return f"partials/{round_id}/{combiner_id}.safetensors"


def save_model(
    models: ModelStore,
    arrays: Mapping[str, np.ndarray],
    *,
    model_id: str | None = None,
    session_id: str | None = None,
    round_id: str | None = None,
    parent_id: str | None = None,
) -> ModelRecord:
    """Encode ``arrays`` as safetensors, store the blob, and return its record (not yet in the state store)."""
    model_id = model_id or new_id()
    blob = encode_model(arrays)
    key = model_key(model_id)
    models.put(key, blob)
    manifest = manifest_of(arrays)
    return ModelRecord(
        id=model_id,
        key=key,
        sha256=sha256_hex(blob),
        size_bytes=len(blob),
        num_parameters=sum(spec.size for spec in manifest),
        tensors=[spec.to_dict() for spec in manifest],
        session_id=session_id,
        round_id=round_id,
        parent_id=parent_id,
    )


def load_model(models: ModelStore, key: str) -> NamedArrays:
    return decode_model(models.get(key))
