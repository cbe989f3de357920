"""Protobuf <-> domain conversion, in paired functions. Nothing past this module sees a protobuf class."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from fedn.chunking import DEFAULT_CHUNK_BYTES, iter_chunks
from fedn.codec import NamedArrays, TensorSpec, encode_payload, sha256_hex
from fedn.errors import InvalidArgument
from fedn.records import ClientFailureRecord, ConfigScalar, MetricSummary, RoundPlan, RoundResult, SessionMode
from fedn.v1 import fedn_pb2 as pb

__all__ = [
    "Announcement",
    "ModelHeaderInfo",
    "TaskInfo",
    "UpdateHeaderInfo",
    "announcement_from_proto",
    "announcement_to_proto",
    "config_from_proto",
    "config_to_proto",
    "model_data_message",
    "model_header_from_proto",
    "model_header_message",
    "model_header_to_proto",
    "pb",
    "round_plan_from_proto",
    "round_plan_to_proto",
    "round_result_from_proto",
    "round_result_to_proto",
    "task_from_proto",
    "task_to_proto",
    "update_header_from_proto",
    "update_header_to_proto",
    "update_messages",
]


@dataclass(frozen=True)
class ModelHeaderInfo:
    model_id: str
    tensors: list[TensorSpec]
    sha256: str
    payload_bytes: int


@dataclass(frozen=True)
class UpdateHeaderInfo:
    round_id: str
    client_id: str
    base_model_id: str
    num_examples: float
    metrics: dict[str, float]
    model: ModelHeaderInfo


@dataclass(frozen=True)
class TaskInfo:
    """A task sent down a client's stream; ``kind`` is "heartbeat", "train" or "upload_grant"."""

    kind: str
    round_id: str = ""
    session_id: str = ""
    model_id: str = ""
    round_index: int = 0
    timeout_s: float = 0.0
    config: dict[str, ConfigScalar] | None = None


_TASK_KINDS = {
    "heartbeat": pb.TASK_KIND_HEARTBEAT,
    "train": pb.TASK_KIND_TRAIN,
    "upload_grant": pb.TASK_KIND_UPLOAD_GRANT,
}


def task_to_proto(task: TaskInfo) -> pb.Task:
    msg = pb.Task(
        kind=_TASK_KINDS[task.kind],
        round_id=task.round_id,
        session_id=task.session_id,
        model_id=task.model_id,
        round_index=task.round_index,
        timeout_s=task.timeout_s,
    )
    config_to_proto(task.config or {}, msg.config)
    return msg


def task_from_proto(msg: pb.Task) -> TaskInfo:
    kind = {v: k for k, v in _TASK_KINDS.items()}.get(msg.kind, "unknown")
    return TaskInfo(
        kind=kind,
        round_id=msg.round_id,
        session_id=msg.session_id,
        model_id=msg.model_id,
        round_index=int(msg.round_index),
        timeout_s=float(msg.timeout_s),
        config=config_from_proto(msg.config),
    )


def config_to_proto(config: Mapping[str, ConfigScalar], target) -> None:
    """Fill a ``map<string, ConfigValue>`` field from a dict of scalars."""
    for key, value in config.items():
        slot = target[key]
        if isinstance(value, bool):
            slot.bool_value = value
        elif isinstance(value, int):
            slot.int_value = value
        elif isinstance(value, float):
            slot.double_value = value
        elif isinstance(value, str):
            slot.string_value = value
        else:
            raise InvalidArgument(f"config value {key!r} must be bool, int, float or str, not {type(value).__name__}")


def config_from_proto(config) -> dict[str, ConfigScalar]:
    out: dict[str, ConfigScalar] = {}
    for key, value in config.items():
        kind = value.WhichOneof("kind")
        out[key] = getattr(value, kind) if kind else None
    return out


def model_header_to_proto(info: ModelHeaderInfo) -> pb.ModelHeader:
    return pb.ModelHeader(
        model_id=info.model_id,
        tensors=[pb.TensorSpec(name=t.name, dtype=t.dtype, shape=list(t.shape)) for t in info.tensors],
        sha256=info.sha256,
        payload_bytes=info.payload_bytes,
    )


def model_header_message(info: ModelHeaderInfo) -> bytes:
    """The first ``ModelChunk`` of a download, serialized: built once per model and sent as is."""
    return pb.ModelChunk(header=model_header_to_proto(info)).SerializeToString()


def model_data_message(data: bytes) -> bytes:
    """A data ``ModelChunk``, serialized: a held model's are built once and sent to every client as is."""
    return pb.ModelChunk(data=data).SerializeToString()


def model_header_from_proto(msg: pb.ModelHeader) -> ModelHeaderInfo:
    return ModelHeaderInfo(
        model_id=msg.model_id,
        tensors=[TensorSpec(t.name, t.dtype, tuple(int(d) for d in t.shape)) for t in msg.tensors],
        sha256=msg.sha256,
        payload_bytes=int(msg.payload_bytes),
    )


def update_header_to_proto(info: UpdateHeaderInfo) -> pb.UpdateHeader:
    return pb.UpdateHeader(
        round_id=info.round_id,
        client_id=info.client_id,
        base_model_id=info.base_model_id,
        num_examples=info.num_examples,
        metrics=dict(info.metrics),
        model=model_header_to_proto(info.model),
    )


def update_header_from_proto(msg: pb.UpdateHeader) -> UpdateHeaderInfo:
    return UpdateHeaderInfo(
        round_id=msg.round_id,
        client_id=msg.client_id,
        base_model_id=msg.base_model_id,
        num_examples=float(msg.num_examples),
        metrics=dict(msg.metrics),
        model=model_header_from_proto(msg.model),
    )


def round_plan_to_proto(plan: RoundPlan) -> pb.RoundPlan:
    msg = pb.RoundPlan(
        round_id=plan.round_id,
        session_id=plan.session_id,
        round_index=plan.round_index,
        model_id=plan.model_id,
        aggregator=plan.aggregator,
        timeout_s=plan.timeout_s,
        max_clients=plan.max_clients,
        sample_seed=plan.sample_seed,
        mode=plan.mode.value,
        buffer_size=plan.buffer_size,
        model_version=plan.model_version,
        staleness_exponent=plan.staleness_exponent,
        max_staleness=plan.max_staleness,
    )
    config_to_proto(plan.config, msg.config)
    config_to_proto(plan.aggregator_config, msg.aggregator_config)
    return msg


def round_plan_from_proto(msg: pb.RoundPlan) -> RoundPlan:
    return RoundPlan(
        round_id=msg.round_id,
        session_id=msg.session_id,
        round_index=msg.round_index,
        model_id=msg.model_id,
        aggregator=msg.aggregator or "fedavg",
        config=config_from_proto(msg.config),
        timeout_s=msg.timeout_s,
        max_clients=msg.max_clients,
        sample_seed=msg.sample_seed,
        aggregator_config=config_from_proto(msg.aggregator_config),
        mode=_plan_mode(msg.mode),
        buffer_size=msg.buffer_size,
        model_version=msg.model_version,
        staleness_exponent=msg.staleness_exponent,
        max_staleness=msg.max_staleness,
    )


def _plan_mode(text: str) -> SessionMode:
    try:
        return SessionMode(text or "sync")
    except ValueError:
        raise InvalidArgument(f"unknown round mode {text!r}; known: sync, async") from None


@dataclass(frozen=True)
class Announcement:
    """An asynchronous session's global model moved on (or, with ``final``, the session ended)."""

    session_id: str
    model_id: str
    model_version: int
    final: bool = False


def announcement_to_proto(info: Announcement) -> pb.ModelAnnouncement:
    return pb.ModelAnnouncement(
        session_id=info.session_id, model_id=info.model_id, model_version=info.model_version, final=info.final
    )


def announcement_from_proto(msg: pb.ModelAnnouncement) -> Announcement:
    return Announcement(msg.session_id, msg.model_id, int(msg.model_version), bool(msg.final))


def round_result_to_proto(result: RoundResult) -> pb.RoundResult:
    return pb.RoundResult(
        round_id=result.round_id,
        combiner_id=result.combiner_id,
        partial_key=result.partial_key,
        total_weight=result.total_weight,
        num_selected=result.num_selected,
        num_updates=result.num_updates,
        num_rejected=result.num_rejected,
        failures=[pb.ClientFailure(client_id=f.client_id, error=f.error) for f in result.failures],
        metrics={
            k: pb.MetricSummary(mean=m.mean, min=m.min, max=m.max, count=m.count) for k, m in result.metrics.items()
        },
        client_ids=list(result.client_ids),
    )


def round_result_from_proto(msg: pb.RoundResult) -> RoundResult:
    return RoundResult(
        round_id=msg.round_id,
        combiner_id=msg.combiner_id,
        partial_key=msg.partial_key,
        total_weight=msg.total_weight,
        num_selected=msg.num_selected,
        num_updates=msg.num_updates,
        num_rejected=msg.num_rejected,
        failures=[
            ClientFailureRecord(client_id=f.client_id, combiner_id=msg.combiner_id, error=f.error) for f in msg.failures
        ],
        metrics={k: MetricSummary(mean=m.mean, min=m.min, max=m.max, count=m.count) for k, m in msg.metrics.items()},
        client_ids=list(msg.client_ids),
    )


def update_messages(
    round_id: str,
    client_id: str,
    base_model_id: str,
    num_examples: float,
    metrics: Mapping[str, float],
    arrays: NamedArrays,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Iterator[pb.UpdateChunk]:
    """An UploadUpdate request stream: the header (manifest, sha256, size), then the payload in chunks."""
    manifest, payload = encode_payload(arrays)
    header = UpdateHeaderInfo(
        round_id=round_id,
        client_id=client_id,
        base_model_id=base_model_id,
        num_examples=num_examples,
        metrics=dict(metrics),
        model=ModelHeaderInfo("", manifest, sha256_hex(payload), len(payload)),
    )
    yield pb.UpdateChunk(header=update_header_to_proto(header))
    for chunk in iter_chunks(payload, chunk_bytes):
        yield pb.UpdateChunk(data=chunk)
