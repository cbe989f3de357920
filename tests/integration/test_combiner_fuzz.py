"""Malformed input at every combiner method gets a precise, final status: never INTERNAL or UNKNOWN (a
bug of ours), never UNAVAILABLE (which tells the caller to retry something that cannot succeed), and
no traceback in the log. The combiner keeps serving afterwards."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedn import wire
from fedn.chunking import iter_chunks
from fedn.clock import ManualClock
from fedn.codec import encode_payload, sha256_hex
from fedn.records import RoundPlan
from fedn.v1 import fedn_pb2 as pb
from fedn.v1 import fedn_pb2_grpc as pb_grpc

ROUND_ID = "r-fuzz"
NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE}
FINAL = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DATA_LOSS,
}
CLIENTS = [f"c{i}" for i in range(24)]  # each upload case that reaches the round uses its own selected client


class _DefaultTimeout(
    grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor, grpc.StreamUnaryClientInterceptor
):
    """Every call without a timeout gets one: a request wrongly accepted must fail its case, not hang."""

    def _with_timeout(self, details):
        return details._replace(timeout=10.0) if details.timeout is None else details

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_timeout(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_timeout(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._with_timeout(details), requests)


@dataclass
class Federation:
    """A combiner on a ManualClock (its round never ends by itself) with a round open for ``CLIENTS``."""

    stub: object
    channel: grpc.Channel
    model_id: str
    arrays: dict[str, np.ndarray]
    clients: list[str]

    def next_client(self) -> str:
        return self.clients.pop()


@pytest.fixture
def fed(start_combiner, model_store, global_model) -> Iterator[Federation]:
    model_id, arrays = global_model
    server, stub = start_combiner(model_store, ManualClock(), max_update_bytes=64 * 1024, chunk_bytes=1024)
    streams = [stub.TaskStream(pb.TaskStreamRequest(client_id=c, client_name=c)) for c in CLIENTS]
    for call in streams:
        next(call)  # the first heartbeat: it is connected
    plan = RoundPlan(round_id=ROUND_ID, session_id="s1", round_index=1, model_id=model_id, timeout_s=600.0)
    runner = threading.Thread(
        target=lambda: _code(lambda: stub.RunRound(wire.round_plan_to_proto(plan), timeout=120)), daemon=True
    )
    runner.start()
    for call in streams:  # every client has its train task: the round is open
        while next(call).kind != pb.TASK_KIND_TRAIN:
            pass
    channel = grpc.intercept_channel(grpc.insecure_channel(f"127.0.0.1:{server.port}"), _DefaultTimeout())
    yield Federation(pb_grpc.CombinerStub(channel), channel, model_id, arrays, list(CLIENTS))
    channel.close()
    for call in streams:
        call.cancel()


def _code(call: Callable[[], object]) -> grpc.StatusCode:
    """The status ``call`` ends with (streams are read to their end)."""
    try:
        reply = call()
        if isinstance(reply, grpc.Call) or hasattr(reply, "__next__"):
            for _ in reply:
                pass
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def _plan(model_id: str, **changes) -> pb.RoundPlan:
    fields = {"round_id": "r-bad", "session_id": "s1", "round_index": 1, "model_id": model_id, "timeout_s": 5.0}
    return pb.RoundPlan(**{**fields, **changes})


def _kindless_config(model_id: str) -> pb.RoundPlan:
    msg = _plan(model_id)
    msg.config["lr"].SetInParent()  # a ConfigValue with no kind set
    return msg


def _nan_config(model_id: str) -> pb.RoundPlan:
    msg = _plan(model_id)
    msg.config["lr"].double_value = float("nan")
    return msg


def _header(fed: Federation, client_id: str, **changes) -> pb.UpdateHeader:
    manifest, data = encode_payload(fed.arrays)
    info = wire.UpdateHeaderInfo(
        ROUND_ID, client_id, "", 10.0, {"loss": 1.0}, wire.ModelHeaderInfo("", manifest, sha256_hex(data), len(data))
    )
    msg = wire.update_header_to_proto(info)
    for name, value in changes.items():
        if name == "tensors":
            del msg.model.tensors[:]
            msg.model.tensors.extend(value)
        elif name == "metrics":
            msg.metrics.clear()
            msg.metrics.update(value)
        else:
            setattr(msg, name, value)
    return msg


def _upload(fed: Federation, *messages: pb.UpdateChunk) -> grpc.StatusCode:
    return _code(lambda: fed.stub.UploadUpdate(iter(messages), timeout=10))


def _payload(fed: Federation) -> list[pb.UpdateChunk]:
    _, data = encode_payload(fed.arrays)
    return [pb.UpdateChunk(data=c) for c in iter_chunks(data, 700)]


def _raw(fed: Federation, method: str, payload: bytes) -> grpc.StatusCode:
    """A unary method called with ``payload`` as its serialized request, whatever it holds."""
    call = fed.channel.unary_unary(f"/fedn.v1.Combiner/{method}", request_serializer=None, response_deserializer=None)
    return _code(lambda: call(payload, timeout=10))


NUL_ID = "model\x00id"
LONG_ID = "m" * 300
INVALID = grpc.StatusCode.INVALID_ARGUMENT

CASES: dict[str, tuple[Callable[[Federation], grpc.StatusCode], grpc.StatusCode]] = {
    # RunRound
    "run round: config value with no kind": (
        lambda f: _code(lambda: f.stub.RunRound(_kindless_config(f.model_id))),
        INVALID,
    ),
    "run round: NaN config value": (lambda f: _code(lambda: f.stub.RunRound(_nan_config(f.model_id))), INVALID),
    "run round: NUL in model id": (lambda f: _code(lambda: f.stub.RunRound(_plan(NUL_ID))), INVALID),
    "run round: model id over 255 bytes": (lambda f: _code(lambda: f.stub.RunRound(_plan(LONG_ID))), INVALID),
    "run round: no round id": (lambda f: _code(lambda: f.stub.RunRound(_plan(f.model_id, round_id=""))), INVALID),
    "run round: control char in session id": (
        lambda f: _code(lambda: f.stub.RunRound(_plan(f.model_id, session_id="s\n1"))),
        INVALID,
    ),
    "run round: NaN timeout": (
        lambda f: _code(lambda: f.stub.RunRound(_plan(f.model_id, timeout_s=float("nan")))),
        INVALID,
    ),
    "run round: infinite timeout": (
        lambda f: _code(lambda: f.stub.RunRound(_plan(f.model_id, timeout_s=float("inf")))),
        INVALID,
    ),
    "run round: negative max_clients": (
        lambda f: _code(lambda: f.stub.RunRound(_plan(f.model_id, max_clients=-1))),
        INVALID,
    ),
    "run round: unknown mode": (lambda f: _code(lambda: f.stub.RunRound(_plan(f.model_id, mode="turbo"))), INVALID),
    "run round: unknown aggregator": (
        lambda f: _code(lambda: f.stub.RunRound(_plan(f.model_id, aggregator="nope"))),
        INVALID,
    ),
    "run round: unknown model": (
        lambda f: _code(lambda: f.stub.RunRound(_plan("no-such-model"))),
        grpc.StatusCode.NOT_FOUND,
    ),
    "run round: garbage bytes": (lambda f: _raw(f, "RunRound", b"\xff\xff\xff\xff\x0f"), INVALID),
    # AnnounceModel
    "announce: NUL in session id": (
        lambda f: _code(lambda: f.stub.AnnounceModel(pb.ModelAnnouncement(session_id="s\x001", model_id="m"))),
        INVALID,
    ),
    "announce: no session id": (
        lambda f: _code(lambda: f.stub.AnnounceModel(pb.ModelAnnouncement(model_id="m"))),
        INVALID,
    ),
    "announce: model id over 255 bytes": (
        lambda f: _code(lambda: f.stub.AnnounceModel(pb.ModelAnnouncement(session_id="s1", model_id=LONG_ID))),
        INVALID,
    ),
    "announce: negative version": (
        lambda f: _code(
            lambda: f.stub.AnnounceModel(pb.ModelAnnouncement(session_id="s1", model_id="m", model_version=-1))
        ),
        INVALID,
    ),
    "announce: garbage bytes": (lambda f: _raw(f, "AnnounceModel", b"\x0a\xff\xff\xff"), INVALID),
    # TaskStream
    "task stream: no client id": (
        lambda f: _code(lambda: f.stub.TaskStream(pb.TaskStreamRequest(), timeout=5)),
        INVALID,
    ),
    "task stream: NUL in client id": (
        lambda f: _code(lambda: f.stub.TaskStream(pb.TaskStreamRequest(client_id="a\x00b"), timeout=5)),
        INVALID,
    ),
    "task stream: client id over 128 chars": (
        lambda f: _code(lambda: f.stub.TaskStream(pb.TaskStreamRequest(client_id="c" * 129), timeout=5)),
        INVALID,
    ),
    "task stream: control chars in the name": (
        lambda f: _code(
            lambda: f.stub.TaskStream(pb.TaskStreamRequest(client_id="ok", client_name="x\x1b[31m"), timeout=5)
        ),
        INVALID,
    ),
    # DownloadModel
    "download: NUL in model id": (
        lambda f: _code(lambda: f.stub.DownloadModel(pb.DownloadModelRequest(model_id=NUL_ID, client_id="c0"))),
        INVALID,
    ),
    "download: model id over 255 bytes": (
        lambda f: _code(lambda: f.stub.DownloadModel(pb.DownloadModelRequest(model_id=LONG_ID, client_id="c0"))),
        INVALID,
    ),
    "download: no model id": (
        lambda f: _code(lambda: f.stub.DownloadModel(pb.DownloadModelRequest(client_id="c0"))),
        INVALID,
    ),
    "download: path in model id": (
        lambda f: _code(lambda: f.stub.DownloadModel(pb.DownloadModelRequest(model_id="../../etc/passwd"))),
        INVALID,
    ),
    "download: unknown model": (
        lambda f: _code(lambda: f.stub.DownloadModel(pb.DownloadModelRequest(model_id="nope", client_id="c0"))),
        grpc.StatusCode.NOT_FOUND,
    ),
    # RequestUpload
    "request upload: NUL in round id": (
        lambda f: _code(lambda: f.stub.RequestUpload(pb.UploadRequest(round_id="r\x00", client_id="c0"))),
        INVALID,
    ),
    "request upload: no client id": (
        lambda f: _code(lambda: f.stub.RequestUpload(pb.UploadRequest(round_id=ROUND_ID))),
        INVALID,
    ),
    "request upload: negative size": (
        lambda f: _code(
            lambda: f.stub.RequestUpload(pb.UploadRequest(round_id=ROUND_ID, client_id="c0", payload_bytes=-5))
        ),
        INVALID,
    ),
    "request upload: too large": (
        lambda f: _code(
            lambda: f.stub.RequestUpload(pb.UploadRequest(round_id=ROUND_ID, client_id="c0", payload_bytes=2**62))
        ),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ),
    "request upload: unknown round": (
        lambda f: _code(lambda: f.stub.RequestUpload(pb.UploadRequest(round_id="r-other", client_id="c0"))),
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    # ReportFailure
    "report failure: NUL in client id": (
        lambda f: _code(
            lambda: f.stub.ReportFailure(pb.ReportFailureRequest(round_id=ROUND_ID, client_id="c\x00", error="x"))
        ),
        INVALID,
    ),
    "report failure: round id over 255 bytes": (
        lambda f: _code(lambda: f.stub.ReportFailure(pb.ReportFailureRequest(round_id=LONG_ID, client_id="c0"))),
        INVALID,
    ),
    "report failure: client not in the round": (
        lambda f: _code(
            lambda: f.stub.ReportFailure(pb.ReportFailureRequest(round_id=ROUND_ID, client_id="stranger", error="x"))
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    # UploadUpdate
    "upload: empty stream": (lambda f: _upload(f), INVALID),
    "upload: data before the header": (lambda f: _upload(f, *_payload(f)), INVALID),
    "upload: NUL in round id": (
        lambda f: _upload(f, pb.UpdateChunk(header=_header(f, f.next_client(), round_id="r\x00"))),
        INVALID,
    ),
    "upload: client id over 128 chars": (
        lambda f: _upload(f, pb.UpdateChunk(header=_header(f, "c" * 300))),
        INVALID,
    ),
    "upload: NUL in base model id": (
        lambda f: _upload(f, pb.UpdateChunk(header=_header(f, f.next_client(), base_model_id="m\x00"))),
        INVALID,
    ),
    "upload: absurd tensor shapes": (
        lambda f: _upload(
            f,
            pb.UpdateChunk(
                header=_header(
                    f, f.next_client(), tensors=[pb.TensorSpec(name="fc.weight", dtype="float32", shape=[2**62, 2**62])]
                )
            ),
            *_payload(f),
        ),
        INVALID,
    ),
    "upload: negative dimension": (
        lambda f: _upload(
            f,
            pb.UpdateChunk(
                header=_header(f, f.next_client(), tensors=[pb.TensorSpec(name="w", dtype="float32", shape=[-3])])
            ),
        ),
        INVALID,
    ),
    "upload: unknown dtype": (
        lambda f: _upload(
            f,
            pb.UpdateChunk(header=_header(f, f.next_client(), tensors=[pb.TensorSpec(name="w", dtype="object")])),
        ),
        INVALID,
    ),
    "upload: NaN metric (left out, the update is kept)": (
        lambda f: _upload(
            f, pb.UpdateChunk(header=_header(f, f.next_client(), metrics={"auc": float("nan")})), *_payload(f)
        ),
        grpc.StatusCode.OK,
    ),
    "upload: control char in a metric name": (
        lambda f: _upload(f, pb.UpdateChunk(header=_header(f, f.next_client(), metrics={"lo\nss": 1.0}))),
        INVALID,
    ),
    "upload: ten thousand metrics": (
        lambda f: _upload(
            f, pb.UpdateChunk(header=_header(f, f.next_client(), metrics={f"m{i}": 1.0 for i in range(10_000)}))
        ),
        INVALID,
    ),
    "upload: a second header after data": (
        lambda f: _upload(
            f,
            pb.UpdateChunk(header=_header(f, c := f.next_client())),
            *_payload(f),
            pb.UpdateChunk(header=_header(f, c)),
        ),
        INVALID,
    ),
    "upload: oversized header": (
        lambda f: _upload(
            f, pb.UpdateChunk(header=_header(f, f.next_client(), metrics={"m" * 100: 1.0, "x" * (5 << 20): 1.0}))
        ),
        grpc.StatusCode.RESOURCE_EXHAUSTED,  # over the message limit: refused by gRPC before our code runs
    ),
    "upload: payload longer than its header says": (
        lambda f: _upload(f, pb.UpdateChunk(header=_header(f, f.next_client())), *_payload(f), *_payload(f)),
        grpc.StatusCode.RESOURCE_EXHAUSTED,  # more than announced: refused as it arrives, not staged
    ),
    "upload: garbage message": (
        lambda f: _code(
            lambda: f.channel.stream_unary(
                "/fedn.v1.Combiner/UploadUpdate", request_serializer=None, response_deserializer=None
            )(iter([b"\x0a\x05\xff\xff"]), timeout=10)
        ),
        INVALID,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_requests_get_a_final_status_and_no_traceback(case, fed, caplog):
    send, expected = CASES[case]
    with caplog.at_level(logging.INFO):
        code = send(fed)
    assert code == expected, f"{case}: {code}"
    assert not [r for r in caplog.records if r.exc_info], f"{case} logged a traceback"
    assert _heartbeat_works(fed)


def _heartbeat_works(fed: Federation) -> bool:
    call = fed.stub.TaskStream(pb.TaskStreamRequest(client_id="probe", client_name="probe"), timeout=10)
    try:
        return next(call).kind == pb.TASK_KIND_HEARTBEAT
    finally:
        call.cancel()


def test_an_update_header_leaves_non_finite_metrics_out():
    msg = pb.UpdateHeader(round_id="r1", client_id="c1", num_examples=1.0, metrics={"loss": 0.5, "auc": float("nan")})
    msg.model.sha256 = "0" * 64
    assert wire.update_header_from_proto(msg).metrics == {"loss": 0.5}


def test_a_repeated_failure_report_is_a_conflict(fed):
    client_id = fed.next_client()
    error = "Traceback\x1b[2J\x00" + "x" * 100_000  # bounded where it is kept: test_combiner_runs
    fed.stub.ReportFailure(pb.ReportFailureRequest(round_id=ROUND_ID, client_id=client_id, error=error), timeout=10)
    # the report is the client's answer: asking again is a conflict, not an error of ours
    again = _code(lambda: fed.stub.ReportFailure(pb.ReportFailureRequest(round_id=ROUND_ID, client_id=client_id)))
    assert again == grpc.StatusCode.ALREADY_EXISTS


_ids = st.text(st.characters(codec="utf-8"), max_size=300)
_numbers = st.floats(allow_nan=True, allow_infinity=True)
_ints = st.integers(min_value=-(2**63), max_value=2**63 - 1)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_random_requests_get_a_final_status_and_the_combiner_keeps_serving(fed, data):
    kind = data.draw(st.sampled_from(["plan", "announce", "raw", "upload", "failure", "download"]))
    if kind == "plan":
        msg = pb.RoundPlan(
            round_id=data.draw(_ids),
            session_id=data.draw(_ids),
            round_index=data.draw(_ints),
            model_id=data.draw(_ids),  # a valid plan for a real model would start a round that never ends
            aggregator=data.draw(st.sampled_from(["", "fedavg", "median", "krum", "x\x00"])),
            timeout_s=data.draw(st.one_of(_numbers, st.just(0.001))),
            max_clients=data.draw(_ints),
            mode=data.draw(st.sampled_from(["", "sync", "async", "bogus"])),
            buffer_size=data.draw(_ints),
            model_version=data.draw(_ints),
            staleness_exponent=data.draw(_numbers),
            max_staleness=data.draw(_ints),
        )
        for key in data.draw(st.lists(_ids, max_size=3)):
            value = msg.config[key]
            choice = data.draw(st.sampled_from(["none", "double", "int", "string", "bool"]))
            if choice == "none":
                value.SetInParent()
            elif choice == "double":
                value.double_value = data.draw(_numbers)
            elif choice == "int":
                value.int_value = data.draw(_ints)
            elif choice == "string":
                value.string_value = data.draw(_ids)
            else:
                value.bool_value = data.draw(st.booleans())
        code = _code(lambda: fed.stub.RunRound(msg, timeout=10))
    elif kind == "announce":
        msg = pb.ModelAnnouncement(
            session_id=data.draw(_ids), model_id=data.draw(_ids), model_version=data.draw(_ints), final=False
        )
        code = _code(lambda: fed.stub.AnnounceModel(msg, timeout=10))
    elif kind == "raw":
        method = data.draw(st.sampled_from(["RunRound", "AnnounceModel", "RequestUpload", "ReportFailure"]))
        code = _raw(fed, method, data.draw(st.binary(max_size=200)))
    elif kind == "failure":
        msg = pb.ReportFailureRequest(round_id=data.draw(_ids), client_id=data.draw(_ids), error=data.draw(_ids))
        code = _code(lambda: fed.stub.ReportFailure(msg, timeout=10))
    elif kind == "download":
        msg = pb.DownloadModelRequest(model_id=data.draw(_ids), client_id=data.draw(_ids))
        code = _code(lambda: fed.stub.DownloadModel(msg, timeout=10))
    else:
        header = pb.UpdateHeader(
            round_id=data.draw(st.one_of(_ids, st.just(ROUND_ID))),
            client_id=data.draw(st.one_of(_ids, st.sampled_from(CLIENTS))),
            base_model_id=data.draw(_ids),
            num_examples=data.draw(_numbers),
            metrics=data.draw(st.dictionaries(_ids, _numbers, max_size=4)),
            model=pb.ModelHeader(
                tensors=[
                    pb.TensorSpec(
                        name=data.draw(_ids),
                        dtype=data.draw(st.sampled_from(["float32", "int64", "object", "", "<f8"])),
                        shape=data.draw(st.lists(_ints, max_size=4)),
                    )
                    for _ in range(data.draw(st.integers(0, 3)))
                ],
                sha256=data.draw(_ids),
                payload_bytes=data.draw(_ints),
            ),
        )
        chunks = [pb.UpdateChunk(data=b) for b in data.draw(st.lists(st.binary(max_size=64), max_size=3))]
        first = [pb.UpdateChunk(header=header)] if data.draw(st.booleans()) else []
        code = _code(lambda: fed.stub.UploadUpdate(iter(first + chunks), timeout=10))
    assert code in FINAL and code not in NEVER, code
    assert _heartbeat_works(fed)
