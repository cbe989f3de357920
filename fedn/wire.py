"""Protobuf <-> domain conversion, in paired functions. Nothing past this module sees a protobuf class."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from pydantic import ValidationError

from fedn.chunking import DEFAULT_CHUNK_BYTES, iter_chunks
from fedn.codec import NamedArrays, TensorSpec, encode_payload, sha256_hex
from fedn.errors import InvalidArgument, validation_problem
from fedn.ids import check_id, check_text, printable
from fedn.records import ConfigScalar, RoundPlan, SessionMode
from fedn.v1 import fedn_pb2 as pb
from fedn.wire_limits import (
    MAX_KEY_CHARS,
    MAX_NAME_CHARS,
    MAX_TENSOR_DIM,
    MAX_TENSOR_DIMS,
    MAX_TENSOR_NAME_CHARS,
    MAX_TIMEOUT_S,
    check_metrics,
    check_model_sha256,
    config_from_proto,
    config_to_proto,
)
from fedn.wire_limits import check_count as _check_count
from fedn.wire_limits import check_finite as _check_finite
from fedn.wire_limits import check_sha256 as _check_sha256
from fedn.wire_results import round_result_from_proto, round_result_to_proto

__all__ = [
    "SHED_MESSAGE",
    "Announcement",
    "ModelHeaderInfo",
    "TaskInfo",
    "UpdateHeaderInfo",
    "announcement_from_proto",
    "announcement_to_proto",
    "config_from_proto",
    "config_to_proto",
    "download_compression_from_proto",
    "download_request_from_proto",
    "failure_report_from_proto",
    "model_header_from_proto",
    "model_header_message",
    "model_header_to_proto",
    "pb",
    "round_plan_from_proto",
    "round_plan_to_proto",
    "round_result_from_proto",
    "round_result_to_proto",
    "task_from_proto",
    "task_stream_codecs_from_proto",
    "task_stream_request_from_proto",
    "task_to_proto",
    "update_header_from_proto",
    "update_header_to_proto",
    "update_messages",
    "update_payload_messages",
    "upload_request_from_proto",
]

# The status details of a task stream a combiner ends to rebalance (UNAVAILABLE): the client asks the
# reducer for a combiner again. Load generators tell this ending from failures by it.
SHED_MESSAGE = "rebalanced: ask the reducer for a combiner"

# What a peer may send is bounded at decode (fedn.wire_limits): anything past it is refused with InvalidArgument.
_MAX_CODECS = 16
_DTYPE_RE = re.compile(r"^[A-Za-z0-9<>|=]{1,16}$")


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
    compression: str = ""  # codec text of the payload (fedn.compression); "" or "none": raw tensors


@dataclass(frozen=True)
class TaskInfo:
    """A task sent down a client's stream; ``kind`` is "heartbeat", "train", "evaluate" or "upload_grant"."""

    kind: str
    round_id: str = ""
    session_id: str = ""
    model_id: str = ""
    round_index: int = 0
    timeout_s: float = 0.0
    config: dict[str, ConfigScalar] | None = None
    compression: str = ""  # train: codec text for the update ("" or "none": raw)
    downlink_compression: str = ""  # train: codec text to ask DownloadModel for ("" or "none": raw)


_TASK_KINDS = {
    "heartbeat": pb.TASK_KIND_HEARTBEAT,
    "train": pb.TASK_KIND_TRAIN,
    "upload_grant": pb.TASK_KIND_UPLOAD_GRANT,
    "evaluate": pb.TASK_KIND_EVALUATE,
}


def task_to_proto(task: TaskInfo) -> pb.Task:
    msg = pb.Task(
        kind=_TASK_KINDS[task.kind],
        round_id=task.round_id,
        session_id=task.session_id,
        model_id=task.model_id,
        round_index=task.round_index,
        timeout_s=task.timeout_s,
        compression=task.compression,
        downlink_compression=task.downlink_compression,
    )
    config_to_proto(task.config or {}, msg.config)
    return msg


def task_from_proto(msg: pb.Task) -> TaskInfo:
    """A task as a client receives it; InvalidArgument for one no combiner of ours would send."""
    kind = {v: k for k, v in _TASK_KINDS.items()}.get(msg.kind, "unknown")
    timeout_s = float(msg.timeout_s)
    if not (math.isfinite(timeout_s) and 0 <= timeout_s <= MAX_TIMEOUT_S):
        raise InvalidArgument(f"task timeout_s must be a number of seconds in [0, {MAX_TIMEOUT_S:g}], got {timeout_s}")
    return TaskInfo(
        kind=kind,
        round_id=msg.round_id,
        session_id=msg.session_id,
        model_id=msg.model_id,
        round_index=int(msg.round_index),
        timeout_s=timeout_s,
        config=config_from_proto(msg.config),
        compression=check_text(msg.compression, "compression", MAX_KEY_CHARS),
        downlink_compression=check_text(msg.downlink_compression, "downlink_compression", MAX_KEY_CHARS),
    )


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


def model_header_from_proto(msg: pb.ModelHeader) -> ModelHeaderInfo:
    """The header of a model stream, with its manifest bounded (names, dtypes, shapes) and its digest checked
    for form; whether it matches a model is for :func:`fedn.codec.check_manifest` to say."""
    return ModelHeaderInfo(
        model_id=check_id(msg.model_id, "model_id", optional=True),
        tensors=[_tensor_spec_from_proto(t) for t in msg.tensors],
        sha256=_check_sha256(msg.sha256),
        payload_bytes=_check_count(msg.payload_bytes, "payload_bytes"),
    )


def _tensor_spec_from_proto(msg: pb.TensorSpec) -> TensorSpec:
    name, shape = check_text(msg.name, "tensor name", MAX_TENSOR_NAME_CHARS, empty=False), tuple(msg.shape)
    if not _DTYPE_RE.fullmatch(msg.dtype):
        raise InvalidArgument(f"tensor {printable(name[:40])!r}: dtype {printable(msg.dtype[:40])!r} is unknown")
    if len(shape) > MAX_TENSOR_DIMS or any(not 0 <= d <= MAX_TENSOR_DIM for d in shape):
        raise InvalidArgument(f"tensor {printable(name[:40])!r}: at most 32 dimensions, each from 0 to 2**40")
    return TensorSpec(name, msg.dtype, tuple(int(d) for d in shape))


def update_header_to_proto(info: UpdateHeaderInfo) -> pb.UpdateHeader:
    return pb.UpdateHeader(
        round_id=info.round_id,
        client_id=info.client_id,
        base_model_id=info.base_model_id,
        num_examples=info.num_examples,
        metrics=dict(info.metrics),
        model=model_header_to_proto(info.model),
        compression=info.compression,
    )


def update_header_from_proto(msg: pb.UpdateHeader) -> UpdateHeaderInfo:
    """An update's header: ids checked, metrics bounded in number and name (they are summed per name)."""
    return UpdateHeaderInfo(
        round_id=check_id(msg.round_id, "round_id"),
        client_id=check_id(msg.client_id, "client_id"),
        base_model_id=check_id(msg.base_model_id, "base_model_id", optional=True),
        num_examples=float(msg.num_examples),  # bounded by the run, which counts a refusal against the client
        metrics=check_metrics(msg.metrics),
        model=model_header_from_proto(msg.model),
        compression=check_text(msg.compression, "compression", MAX_KEY_CHARS),
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
        model_sha256=plan.model_sha256,
        compression=plan.compression,
        downlink_compression=plan.downlink_compression,
    )
    config_to_proto(plan.config, msg.config)
    config_to_proto(plan.aggregator_config, msg.aggregator_config)
    return msg


def round_plan_from_proto(msg: pb.RoundPlan) -> RoundPlan:
    """A plan from the reducer, every field checked: ids, finite positive timeout, no negative count."""
    timeout_s = msg.timeout_s
    if not (math.isfinite(timeout_s) and 0 < timeout_s <= MAX_TIMEOUT_S):
        raise InvalidArgument(f"round timeout_s must be a number of seconds in (0, {MAX_TIMEOUT_S:g}], got {timeout_s}")
    try:
        return RoundPlan(
            round_id=check_id(msg.round_id, "round_id"),
            session_id=check_id(msg.session_id, "session_id"),
            round_index=_check_count(msg.round_index, "round_index"),
            model_id=check_id(msg.model_id, "model_id"),
            aggregator=check_text(msg.aggregator, "aggregator", MAX_KEY_CHARS) or "fedavg",
            config=config_from_proto(msg.config),
            timeout_s=timeout_s,
            max_clients=_check_count(msg.max_clients, "max_clients"),
            sample_seed=msg.sample_seed,
            aggregator_config=config_from_proto(msg.aggregator_config, "aggregator_config"),
            mode=_plan_mode(msg.mode),
            buffer_size=_check_count(msg.buffer_size, "buffer_size"),
            model_version=_check_count(msg.model_version, "model_version"),
            staleness_exponent=_check_finite(msg.staleness_exponent, "staleness_exponent"),
            max_staleness=_check_count(msg.max_staleness, "max_staleness"),
            model_sha256=check_model_sha256(msg.model_sha256),
            compression=check_text(msg.compression, "compression", MAX_KEY_CHARS) or "none",
            downlink_compression=check_text(msg.downlink_compression, "downlink_compression", MAX_KEY_CHARS) or "none",
        )
    except ValidationError as exc:
        raise validation_problem(exc, "round plan") from None


def _plan_mode(text: str) -> SessionMode:
    try:
        return SessionMode(text or "sync")
    except ValueError:
        raise InvalidArgument(f"unknown round mode {printable(text[:40])!r}; known: sync, async, evaluate") from None


@dataclass(frozen=True)
class Announcement:
    """An asynchronous session's global model moved on (or, with ``final``, the session ended);
    ``model_sha256`` is its stored blob's digest ("" if unsaid)."""

    session_id: str
    model_id: str
    model_version: int
    final: bool = False
    model_sha256: str = ""


def announcement_to_proto(info: Announcement) -> pb.ModelAnnouncement:
    return pb.ModelAnnouncement(
        session_id=info.session_id,
        model_id=info.model_id,
        model_version=info.model_version,
        final=info.final,
        model_sha256=info.model_sha256,
    )


def announcement_from_proto(msg: pb.ModelAnnouncement) -> Announcement:
    return Announcement(
        check_id(msg.session_id, "session_id"),
        check_id(msg.model_id, "model_id"),
        _check_count(msg.model_version, "model_version"),
        bool(msg.final),
        check_model_sha256(msg.model_sha256),
    )


def task_stream_request_from_proto(msg: pb.TaskStreamRequest) -> tuple[str, str]:
    """(client id, client name): the name is shown in logs, so it is one printable line."""
    return check_id(msg.client_id, "client_id"), check_text(msg.client_name, "client_name", MAX_NAME_CHARS)


def task_stream_codecs_from_proto(msg: pb.TaskStreamRequest) -> frozenset[str]:
    """The codec names a client announced (bounded: a few short names); none: it takes raw tasks only."""
    if len(msg.codecs) > _MAX_CODECS:
        raise InvalidArgument(f"at most {_MAX_CODECS} codecs may be announced, got {len(msg.codecs)}")
    return frozenset(check_text(c, "codec", MAX_KEY_CHARS, empty=False) for c in msg.codecs)


def download_compression_from_proto(msg: pb.DownloadModelRequest) -> str:
    """The downlink codec text a download asks for ("" when it asks for the raw model)."""
    return check_text(msg.compression, "compression", MAX_KEY_CHARS)


def download_request_from_proto(msg: pb.DownloadModelRequest) -> tuple[str, str]:
    """(model id, client id); the client id may be empty (it only marks the client's download done)."""
    return check_id(msg.model_id, "model_id"), check_id(msg.client_id, "client_id", optional=True)


def upload_request_from_proto(msg: pb.UploadRequest) -> tuple[str, str, int]:
    """(round id, client id, payload bytes)."""
    return (
        check_id(msg.round_id, "round_id"),
        check_id(msg.client_id, "client_id"),
        _check_count(msg.payload_bytes, "payload_bytes"),
    )


def failure_report_from_proto(msg: pb.ReportFailureRequest) -> tuple[str, str, str]:
    """(round id, client id, error): the error is the client's own text, bounded where it is kept."""
    return check_id(msg.round_id, "round_id"), check_id(msg.client_id, "client_id"), msg.error


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
    yield from update_payload_messages(
        round_id, client_id, base_model_id, num_examples, metrics, manifest, payload, chunk_bytes=chunk_bytes
    )


def update_payload_messages(
    round_id: str,
    client_id: str,
    base_model_id: str,
    num_examples: float,
    metrics: Mapping[str, float],
    manifest: list[TensorSpec],
    payload: bytes,
    *,
    compression: str = "",
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Iterator[pb.UpdateChunk]:
    """As :func:`update_messages`, for a payload already encoded (``compression`` names its codec)."""
    header = UpdateHeaderInfo(
        round_id=round_id,
        client_id=client_id,
        base_model_id=base_model_id,
        num_examples=num_examples,
        metrics=dict(metrics),
        model=ModelHeaderInfo("", manifest, sha256_hex(payload), len(payload)),
        compression=compression,
    )
    yield pb.UpdateChunk(header=update_header_to_proto(header))
    for chunk in iter_chunks(payload, chunk_bytes):
        yield pb.UpdateChunk(data=chunk)
