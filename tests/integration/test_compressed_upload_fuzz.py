"""Hostile uploads of compressed updates over real gRPC (int8, top-k and float16 rounds).

Clients that hold a valid train task send bad headers, hand-framed chunks and payloads that are well
formed but poisoned. Each upload gets a final status with a one-line message, the round completes, its
partial is exactly the weighted mean of the updates it accepted, and the combiner keeps serving.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from fedn import wire
from fedn.chunking import iter_chunks
from fedn.clock import ManualClock
from fedn.codec import TensorSpec, decode_model, decode_payload, encode_payload, sha256_hex
from fedn.compression import (
    Compression,
    compressed_payload_bytes,
    encode_update,
    parse_compression,
    section_bytes,
)
from fedn.records import RoundPlan
from fedn.v1 import fedn_pb2 as pb
from tests.integration.test_combiner_grpc import _start_round
from tests.integration.test_compression_grpc import CodecClient, _connect

OK = grpc.StatusCode.OK
INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
ROUND = "r-hostile"
# uplink and downlink codec of each round: the update is a delta from the downlink-decoded model
SETUPS = {
    "int8": ("int8:block=64", "float16"),
    "topk": ("topk:ratio=0.1", "none"),
    "float16": ("float16", "int8:block=256"),
}
F32_MAX = np.finfo(np.float32).max
SCALE_LIMIT = np.float32(F32_MAX / 127)  # the largest int8 scale a combiner takes
UNKNOWN_IN_CHUNK = (b"\x18\x01", b"\xa2\x06\x02hi")  # UpdateChunk field 3 (varint), field 100 (bytes)
UNKNOWN_IN_HEADER = b"\xa2\x06\x02hi\xa8\x06\x01"  # UpdateHeader fields 100 (bytes) and 101 (varint)


def _varint(value: int, width: int = 0) -> bytes:
    """``value`` as a protobuf varint, padded with redundant continuation bytes to ``width`` bytes."""
    out = bytearray([value & 0x7F])
    value >>= 7
    while value:
        out[-1] |= 0x80
        out.append(value & 0x7F)
        value >>= 7
    while len(out) < width:
        out[-1] |= 0x80
        out.append(0)
    return bytes(out)


def _header_frame(header: pb.UpdateHeader, extra: bytes = b"") -> bytes:
    body = header.SerializeToString() + extra
    return b"\x0a" + _varint(len(body)) + body


def _data_frame(chunk: bytes, width: int = 0) -> bytes:
    return b"\x12" + _varint(len(chunk), width) + chunk


def _data_frames(payload: bytes, width: int = 0) -> list[bytes]:
    return [_data_frame(chunk, width) for chunk in iter_chunks(payload, 256)]


@dataclass
class Update:
    """One client's valid update in the round's codec, and the ways to send it (or a variant of it)."""

    client_id: str
    text: str
    codec: Compression
    manifest: list[TensorSpec]
    base: dict[str, np.ndarray]
    trained: dict[str, np.ndarray]
    payload: bytes
    weight: float
    round_id: str = ROUND

    def header(self, payload: bytes | None = None, compression: str | None = None, **fields) -> pb.UpdateHeader:
        data = self.payload if payload is None else payload
        info = wire.UpdateHeaderInfo(
            round_id=self.round_id,
            client_id=self.client_id,
            base_model_id="",
            num_examples=self.weight,
            metrics={"loss": 1.0},
            model=wire.ModelHeaderInfo("", self.manifest, sha256_hex(data), len(data)),
            compression=self.text if compression is None else compression,
        )
        msg = wire.update_header_to_proto(info)
        for name, value in fields.items():
            if name in ("payload_bytes", "sha256"):
                setattr(msg.model, name, value)
            elif name == "metrics":
                msg.metrics.clear()
                msg.metrics.update(value)
            else:
                setattr(msg, name, value)
        return msg

    def frames(self, payload: bytes | None = None, compression: str | None = None, **fields) -> list[bytes]:
        data = self.payload if payload is None else payload
        return [_header_frame(self.header(data, compression, **fields)), *_data_frames(data)]

    def dense(self, payload: bytes | None = None) -> dict[str, np.ndarray]:
        """What the combiner must fold for ``payload`` (the valid one by default); refused: AssertionError."""
        dense = _reference(self.payload if payload is None else payload, self.base, self.manifest, self.codec)
        assert dense is not None, "the layout refuses this payload"
        return dense

    def section(self, name: str) -> int:
        """Offset of tensor ``name``'s section in the payload."""
        offset = 0
        for spec in self.manifest:
            if spec.name == name:
                return offset
            offset += section_bytes(spec, self.codec)
        raise KeyError(name)

    def patched(self, at: int, value: np.ndarray, payload: bytes | None = None) -> bytes:
        """``payload`` (the valid one by default) with ``value``'s bytes at offset ``at`` of fc.weight's section."""
        out = bytearray(self.payload if payload is None else payload)
        start = self.section("fc.weight") + at
        raw = value.tobytes()
        out[start : start + len(raw)] = raw
        return bytes(out)


def _reference(payload: bytes, base, manifest: list[TensorSpec], c: Compression) -> dict[str, np.ndarray] | None:
    """The update a payload stands for, read from the layout docs/compression.md gives (independently of
    fedn.compression), in float64 and then the tensor's dtype; None where a combiner must refuse it."""
    out, offset = {}, 0
    for spec in manifest:
        n, size = spec.size, section_bytes(spec, c)
        section, offset = payload[offset : offset + size], offset + size
        if spec.dtype != "float32":  # carried raw
            out[spec.name] = np.frombuffer(section, np.dtype(spec.dtype).newbyteorder("<")).reshape(spec.shape)
            continue
        if c.codec == "float16":
            delta = np.frombuffer(section, "<f2").astype(np.float64)
        elif c.codec == "int8":
            width = c.block if 0 < c.block < n else n
            blocks = -(-n // width)
            scales = np.frombuffer(section, "<f4", blocks)
            if not np.isfinite(scales).all() or (scales < 0).any() or (scales > SCALE_LIMIT).any():
                return None
            codes = np.frombuffer(section, np.int8, n, 4 * blocks)
            delta = codes * np.repeat(scales.astype(np.float64), width)[:n]
        else:
            k = size // 8
            indices = np.frombuffer(section, "<u4", k).astype(np.int64)
            values = np.frombuffer(section, "<f4", k, 4 * k).astype(np.float64)
            if (indices >= n).any() or (np.diff(indices) <= 0).any():
                return None
            delta = np.zeros(n)
            delta[indices] = values
        if not np.isfinite(delta).all():
            return None
        with np.errstate(over="ignore"):
            dense = (base[spec.name].reshape(-1).astype(np.float64) + delta).astype(np.float32)
        if not np.isfinite(dense).all():
            return None
        out[spec.name] = dense.reshape(spec.shape)
    return out


def _update(client_id: str, text: str, manifest, base, seed: int, round_id: str = ROUND) -> Update:
    rng = np.random.default_rng(seed)
    trained = {}
    for name, value in base.items():
        if value.dtype.kind == "f":
            trained[name] = (value + rng.normal(0, 0.1, value.shape)).astype(value.dtype)
        else:
            trained[name] = np.full_like(value, 4)  # a counter, carried raw: the same for all, so its mean is exact
    codec = parse_compression(text)
    payload = encode_update(trained, base, manifest, codec, rng=rng, residual={})
    return Update(client_id, text, codec, manifest, base, trained, payload, 5.0 + seed, round_id)


# -- the cases -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A hostile upload: its frames, the status it must get, and whether the round takes that refusal as
    the client's answer (``final``: counted rejected, the client may not upload again)."""

    build: Callable[[Update], list[bytes]]
    code: grpc.StatusCode
    final: bool = True
    says: str = ""
    codecs: tuple[str, ...] = tuple(SETUPS)
    folded: Callable[[Update], dict[str, np.ndarray]] | None = None  # an accepted one: what it folds


def _other_codec(u: Update) -> list[bytes]:
    other = {"int8": "float16", "topk": "int8:block=64", "float16": "topk:ratio=0.1"}[u.codec.codec]
    payload = encode_update(u.trained, u.base, u.manifest, parse_compression(other), rng=np.random.default_rng(0))
    return u.frames(payload, other)


def _raw_payload(u: Update) -> bytes:
    manifest, data = encode_payload(u.trained)
    assert manifest == u.manifest
    return data


_OTHER_PARAMETER = {"int8": "int8:block=32", "topk": "topk:ratio=0.2", "float16": "float16:error_feedback=false"}


def _int8_scale(u: Update, scale: float) -> bytes:
    return u.patched(0, np.array([scale], "<f4"))


def _int8_minus_128(u: Update, scale: float | None = None) -> bytes:
    """Code -128 (never encoded) at the first element, optionally with the first block's scale set."""
    blocks = -(-600 // 64)
    payload = u.patched(4 * blocks, np.array([-128], np.int8))
    return payload if scale is None else u.patched(0, np.array([scale], "<f4"), payload)


def _topk_indices(u: Update, change: Callable[[np.ndarray], None]) -> bytes:
    k = 60  # fc.weight (600 entries) keeps ceil(0.1 * 600)
    start = u.section("fc.weight")
    indices = np.frombuffer(u.payload, "<u4", k, start).copy()
    change(indices)
    return u.patched(0, indices.astype("<u4"))


def _swap_first_two(indices: np.ndarray) -> None:
    indices[[0, 1]] = indices[[1, 0]]


def _repeat_first(indices: np.ndarray) -> None:
    indices[1] = indices[0]


def _last_to(value: int) -> Callable[[np.ndarray], None]:
    def change(indices: np.ndarray) -> None:
        indices[-1] = value

    return change


CASES: dict[str, Case] = {
    # -- the header's compression text
    "compression: another codec": Case(_other_codec, INVALID, says="takes"),
    "compression: the round's codec with another parameter": Case(
        lambda u: u.frames(compression=_OTHER_PARAMETER[u.codec.codec]), INVALID, says="takes"
    ),
    "compression: the round's text in capitals": Case(lambda u: u.frames(compression=u.text.upper()), INVALID),
    "compression: empty, with a compressed payload": Case(
        lambda u: u.frames(compression=""), INVALID, says="header announces"
    ),
    "compression: none, with a raw payload (accepted)": Case(
        lambda u: u.frames(_raw_payload(u), "none"),
        OK,
        folded=lambda u: {k: v.copy() for k, v in decode_payload(u.manifest, _raw_payload(u)).items()},
    ),
    "compression: garbage": Case(lambda u: u.frames(compression="zstd:level=9"), INVALID, says="takes"),
    "compression: 1000 characters": Case(
        lambda u: u.frames(compression=u.text + "," + "x" * (999 - len(u.text))), INVALID, False, "compression"
    ),
    "compression: a line break": Case(lambda u: u.frames(compression=u.text + "\n"), INVALID, False, "compression"),
    "compression: escape and NUL": Case(
        lambda u: u.frames(compression="\x1b[2J" + u.text + "\x00"), INVALID, False, "compression"
    ),
    # -- size, digest, weight, metrics, ids
    "payload_bytes: one more than the data": Case(
        lambda u: u.frames(payload_bytes=len(u.payload) + 1), INVALID, says="header announces"
    ),
    "payload_bytes: one less than the data": Case(
        lambda u: u.frames(payload_bytes=len(u.payload) - 1), INVALID, says="header announces"
    ),
    "payload_bytes: negative": Case(lambda u: u.frames(payload_bytes=-1), INVALID, False, "payload_bytes"),
    "payload_bytes: 2**62": Case(lambda u: u.frames(payload_bytes=2**62), grpc.StatusCode.RESOURCE_EXHAUSTED),
    "sha256: another payload's": Case(
        lambda u: u.frames(sha256=sha256_hex(b"other")), grpc.StatusCode.DATA_LOSS, says="sha256"
    ),
    "sha256: not hex": Case(lambda u: u.frames(sha256="g" * 64), INVALID, False, "sha256"),
    **{
        f"num_examples: {label}": Case(lambda u, w=value: u.frames(num_examples=w), INVALID, says="num_examples")
        for label, value in (
            ("NaN", float("nan")),
            ("inf", float("inf")),
            ("-inf", float("-inf")),
            ("0", 0.0),
            ("-1", -1.0),
            ("2**63", 2.0**63),
        )
    },
    "metrics: NaN and 2**63 (accepted, the NaN left out)": Case(
        lambda u: u.frames(metrics={"loss": 1.0, "auc": float("nan"), "big": 2.0**63}), OK
    ),
    "client id: one not in the round": Case(lambda u: u.frames(client_id="stranger"), PRECONDITION, False),
    "client id: a client that already answered": Case(
        lambda u: u.frames(client_id="h00"), grpc.StatusCode.ALREADY_EXISTS, False, "already"
    ),
    "round id: another round": Case(lambda u: u.frames(round_id="r-other"), PRECONDITION, False, "r-other"),
    # -- the chunks
    "chunks: none": Case(lambda u: u.frames()[:1], INVALID, says="after 0 of"),
    "chunks: one byte more than declared": Case(
        lambda u: [*u.frames(), _data_frame(b"\x00")], grpc.StatusCode.RESOURCE_EXHAUSTED, says="more than"
    ),
    "chunks: the last one missing": Case(lambda u: u.frames()[:-1], INVALID, says="stream ended after"),
    "chunks: the header twice": Case(
        lambda u: [u.frames()[0], *u.frames()], INVALID, says="only data chunks may follow"
    ),
    "chunks: a header after the data": Case(
        lambda u: [*u.frames(), u.frames()[0]], INVALID, says="only data chunks may follow"
    ),
    "chunks: data before the header": Case(
        lambda u: [*u.frames()[1:], u.frames()[0]], INVALID, False, "must start with its header"
    ),
    "chunks: unknown fields around the data (accepted)": Case(
        lambda u: [u.frames()[0], *(UNKNOWN_IN_CHUNK[0] + f + UNKNOWN_IN_CHUNK[1] for f in u.frames()[1:])], OK
    ),
    "chunks: unknown fields in and around the header (accepted)": Case(
        lambda u: [_header_frame(u.header(), UNKNOWN_IN_HEADER) + UNKNOWN_IN_CHUNK[0], *u.frames()[1:]], OK
    ),
    "chunks: length varint padded to 5 bytes (accepted)": Case(
        lambda u: [u.frames()[0], *_data_frames(u.payload, width=5)], OK
    ),
    "chunks: length varint padded to 6 bytes": Case(
        lambda u: [u.frames()[0], *_data_frames(u.payload, width=6)], INVALID, says="malformed"
    ),
    "chunks: 0-byte data chunks (accepted)": Case(
        lambda u: [u.frames()[0], _data_frame(b""), *(x for f in u.frames()[1:] for x in (f, _data_frame(b"")))], OK
    ),
    "chunks: the data field twice in a message, the last kept (accepted)": Case(
        lambda u: [u.frames()[0], _data_frame(b"dropped") + u.frames()[1], *u.frames()[2:]], OK
    ),
    "chunks: an empty message": Case(lambda u: [*u.frames()[:2], b"", *u.frames()[2:]], INVALID),
    "chunks: a message cut short": Case(lambda u: [*u.frames()[:2], b"\x12\x05ab"], INVALID, says="malformed"),
    # -- payloads of the right size and digest that are not what an encoder writes
    "float16: a NaN value": Case(
        lambda u: u.frames(u.patched(10, np.array([0x7E00], "<u2"))), INVALID, says="NaN", codecs=("float16",)
    ),
    "float16: an infinite value": Case(
        lambda u: u.frames(u.patched(10, np.array([0xFC00], "<u2"))), INVALID, says="NaN", codecs=("float16",)
    ),
    "int8: a NaN scale": Case(lambda u: u.frames(_int8_scale(u, np.nan)), INVALID, says="NaN", codecs=("int8",)),
    "int8: an infinite scale": Case(
        lambda u: u.frames(_int8_scale(u, np.inf)), INVALID, says="NaN or Inf", codecs=("int8",)
    ),
    "int8: a negative scale": Case(
        lambda u: u.frames(_int8_scale(u, -0.5)), INVALID, says="negative", codecs=("int8",)
    ),
    "int8: a scale beyond float32's range / 127": Case(
        lambda u: u.frames(_int8_scale(u, F32_MAX / 100)), INVALID, says="beyond", codecs=("int8",)
    ),
    "int8: a code of -128 (accepted, decoded as -128 scales)": Case(
        lambda u: u.frames(_int8_minus_128(u)), OK, codecs=("int8",), folded=lambda u: u.dense(_int8_minus_128(u))
    ),
    "int8: a code of -128 at the largest scale": Case(
        lambda u: u.frames(_int8_minus_128(u, SCALE_LIMIT)), INVALID, says="NaN or Inf", codecs=("int8",)
    ),
    "topk: an index out of range": Case(
        lambda u: u.frames(_topk_indices(u, _last_to(600))), INVALID, says="out of range", codecs=("topk",)
    ),
    "topk: index 2**32 - 1": Case(
        lambda u: u.frames(_topk_indices(u, _last_to(2**32 - 1))), INVALID, says="out of range", codecs=("topk",)
    ),
    "topk: indices out of order": Case(
        lambda u: u.frames(_topk_indices(u, _swap_first_two)), INVALID, says="strictly increasing", codecs=("topk",)
    ),
    "topk: an index repeated": Case(
        lambda u: u.frames(_topk_indices(u, _repeat_first)), INVALID, says="strictly increasing", codecs=("topk",)
    ),
    "topk: a NaN value": Case(
        lambda u: u.frames(u.patched(4 * 60, np.array([np.nan], "<f4"))), INVALID, says="NaN", codecs=("topk",)
    ),
    "topk: an infinite value": Case(
        lambda u: u.frames(u.patched(4 * 60 + 8, np.array([-np.inf], "<f4"))), INVALID, says="NaN", codecs=("topk",)
    ),
}


# -- sending ---------------------------------------------------------------------------------------


def _send(channel: grpc.Channel, frames: list[bytes] | Iterator[bytes]) -> tuple[grpc.StatusCode, str]:
    """UploadUpdate with ``frames`` sent as they are: (status, message)."""
    call = channel.stream_unary(
        "/fedn.v1.Combiner/UploadUpdate",
        request_serializer=None,
        response_deserializer=pb.UploadUpdateResponse.FromString,
    )
    try:
        call(iter(frames), timeout=20)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return OK, ""


def _assert_clear(case: str, code: grpc.StatusCode, details: str) -> None:
    """A refusal names its reason on one bounded line."""
    if code != OK:
        assert details and "\n" not in details and len(details) <= 400, f"{case}: {details!r}"
        assert "internal error" not in details, f"{case}: {details}"


def _wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _task(client: CodecClient, round_id: str) -> wire.TaskInfo:
    """``client``'s train task of ``round_id``, once it has come."""

    def found() -> wire.TaskInfo | None:
        return next((t for t in list(client.tasks) if t.round_id == round_id and t.kind == "train"), None)

    _wait_for(lambda: found() is not None, f"{client.client_id}'s train task")
    return found()


def _plan(model_id: str, codec: str, round_id: str = ROUND) -> RoundPlan:
    uplink, downlink = SETUPS[codec]
    return RoundPlan(
        round_id=round_id,
        session_id="s1",
        round_index=1,
        model_id=model_id,
        timeout_s=600.0,  # on a ManualClock: the round ends when every client answered, never by itself
        compression=uplink,
        downlink_compression=downlink,
    )


def _weighted_mean(folded: list[tuple[dict[str, np.ndarray], float]]) -> dict[str, np.ndarray]:
    total = sum(w for _, w in folded)
    return {name: sum(arrays[name].astype(np.float64) * w for arrays, w in folded) / total for name in folded[0][0]}


def _assert_partial(model_store, result, folded: list[tuple[dict[str, np.ndarray], float]]) -> None:
    partial = decode_model(model_store.get(result.partial_key))
    expected = _weighted_mean(folded)
    for name in ("fc.weight", "fc.bias"):
        np.testing.assert_allclose(partial[name], expected[name], rtol=1e-5, atol=1e-6, err_msg=name)
    assert int(partial["steps"]) == 4


def _cancel_mid_way(channel: grpc.Channel, server, u: Update, chunks_sent: int) -> None:
    """Send the header and ``chunks_sent`` chunks of 100 bytes, then cancel the call without ending its
    stream once the combiner has staged the update, and see the combiner drop it."""
    stager = server.rounds.context.stager
    release = threading.Event()
    frames = [_header_frame(u.header()), *(_data_frame(c) for c in iter_chunks(u.payload, 100))]

    def requests() -> Iterator[bytes]:
        yield from frames[: 1 + chunks_sent]
        release.wait(30)

    call = channel.stream_unary("/fedn.v1.Combiner/UploadUpdate", request_serializer=None, response_deserializer=None)
    future = call.future(requests(), timeout=30)
    _wait_for(lambda: stager.staged_updates == 1 or future.done(), "the update to be staged")
    assert not future.done(), f"refused before it was staged: {future.exception()}"
    future.cancel()
    release.set()
    with pytest.raises(grpc.FutureCancelledError):
        future.result(10)
    _wait_for(lambda: stager.staged_updates == 0 and stager.staged_bytes == 0, "the cancelled upload to be dropped")


# -- the campaign ----------------------------------------------------------------------------------


@pytest.mark.parametrize("spool_over_bytes", [16 << 20, 256], ids=["in memory", "spooled"])
@pytest.mark.parametrize("codec", list(SETUPS))
def test_hostile_uploads_get_a_final_status_and_the_round_folds_only_the_accepted(
    codec, spool_over_bytes, start_combiner, model_store, global_model, caplog
):
    model_id, _ = global_model
    server, stub = start_combiner(
        model_store, ManualClock(), max_update_bytes=64 * 1024, chunk_bytes=1024, spool_over_bytes=spool_over_bytes
    )
    cases = [name for name, case in CASES.items() if codec in case.codecs]
    names = [f"h{i:02d}" for i in range(len(cases))] + ["x-cancelled", "y-good", "z-good"]
    clients = _connect(server, stub, names)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    thread, holder = _start_round(stub, _plan(model_id, codec))
    text = SETUPS[codec][0]
    updates: dict[str, Update] = {}
    for seed, client in enumerate(clients):  # in the order train tasks are granted: each download frees the next
        task = _task(client, ROUND)
        assert task.compression == text
        manifest, base, _ = client.download(task)
        updates[client.client_id] = _update(client.client_id, text, manifest, base, seed)
    folded: list[tuple[dict[str, np.ndarray], float]] = []
    accepted, rejected = [], []
    try:
        with caplog.at_level(logging.INFO):
            for case_name, client_id in zip(cases, names, strict=False):
                case, u = CASES[case_name], updates[client_id]
                code, details = _send(channel, case.build(u))
                assert code == case.code, f"{case_name}: {code} {details}"
                assert case.says in details, f"{case_name}: {details}"
                _assert_clear(case_name, code, details)
                if code == OK:
                    folded.append(((case.folded or Update.dense)(u), u.weight))
                    accepted.append(client_id)
                    continue
                again = _send(channel, u.frames())  # the same client, now with its valid update
                if case.final:
                    assert again[0] == grpc.StatusCode.ALREADY_EXISTS, f"{case_name}: {again}"
                    rejected.append(client_id)
                else:
                    assert again == (OK, ""), f"{case_name}: {again}"
                    folded.append((u.dense(), u.weight))
                    accepted.append(client_id)
            cancelled = updates["x-cancelled"]
            for chunks_sent in (2, len(cancelled.payload) // 100 + 1):  # part of the data; all, stream not ended
                _cancel_mid_way(channel, server, cancelled, chunks_sent)
            for client_id in ("x-cancelled", "y-good", "z-good"):  # the combiner still takes valid updates
                u = updates[client_id]
                assert _send(channel, u.frames()) == (OK, ""), client_id
                folded.append((u.dense(), u.weight))
                accepted.append(client_id)
            thread.join(30)
        assert not thread.is_alive() and "error" not in holder, holder
        result = holder["result"]
        assert (result.num_updates, result.num_rejected) == (len(accepted), len(rejected))
        assert sorted(result.client_ids) == sorted(accepted)
        assert sorted(f.client_id for f in result.failures) == sorted(rejected)
        assert result.total_weight == pytest.approx(sum(w for _, w in folded))
        assert result.metrics["big"].mean == 2.0**63 and "auc" not in result.metrics
        _assert_partial(model_store, result, folded)
        assert not [r for r in caplog.records if r.exc_info], "a refusal logged a traceback"
    finally:
        channel.close()
        for client in clients:
            client.close()


def test_a_cancelled_upload_is_dropped_and_its_client_may_send_it_again(start_combiner, model_store, global_model):
    """Regression: gRPC ends a cancelled call's request stream as if the client had ended it. An upload
    cancelled part-way was refused as short, which is final (its client could not send it again and was
    counted rejected); one cancelled after its last chunk was folded though its client saw CANCELLED."""
    model_id, _ = global_model
    server, stub = start_combiner(model_store, ManualClock(), chunk_bytes=1024)
    (client,) = _connect(server, stub, ["c"])
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    thread, holder = _start_round(stub, _plan(model_id, "int8"))
    try:
        task = _task(client, ROUND)
        manifest, base, _ = client.download(task)
        u = _update("c", task.compression, manifest, base, 1)
        every_chunk = len(u.payload) // 100 + 1
        for chunks_sent in (0, 1, 3, every_chunk, 1, every_chunk):
            _cancel_mid_way(channel, server, u, chunks_sent)
        assert _send(channel, u.frames()) == (OK, "")
        thread.join(30)
        result = holder["result"]
        assert (result.num_updates, result.num_rejected, result.failures) == (1, 0, [])
        _assert_partial(model_store, result, [(u.dense(), u.weight)])
    finally:
        channel.close()
        client.close()


def test_raw_updates_in_a_round_sized_for_compressed_ones_stay_within_max_staged_bytes(
    start_combiner, model_store, global_model
):
    """Regression: every client announced int8, so the round's upload slots were sized for int8 updates
    (4 of them in --max-staged-bytes), but an update whose header says "none" was taken raw, so raw
    updates held open in those slots staged several times --max-staged-bytes."""
    model_id, arrays = global_model
    manifest = encode_payload(arrays)[0]
    compressed = compressed_payload_bytes(manifest, parse_compression("int8:block=64"))
    limit = 4 * compressed
    server, stub = start_combiner(model_store, ManualClock(), max_staged_bytes=limit, chunk_bytes=1024)
    stager = server.rounds.context.stager
    names = ["a", "b", "c", "d", "good"]
    clients = _connect(server, stub, names)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    thread, holder = _start_round(stub, _plan(model_id, "int8"))
    release = threading.Event()
    try:
        updates = {}
        for seed, client in enumerate(clients):
            _, base, _ = client.download(_task(client, ROUND))
            updates[client.client_id] = _update(client.client_id, "int8:block=64", manifest, base, seed)

        def held_open(frames: list[bytes]) -> Iterator[bytes]:
            yield from frames[:2]
            release.wait(30)
            yield from frames[2:]

        call = channel.stream_unary("/fedn.v1.Combiner/UploadUpdate", request_serializer=None)
        raw = {c: updates[c].frames(_raw_payload(updates[c]), "none") for c in names[:4]}
        futures = [call.future(held_open(raw[c]), timeout=30) for c in names[:4]]
        most = 0
        deadline = time.monotonic() + 20
        while not all(f.done() for f in futures) and time.monotonic() < deadline:
            most = max(most, stager.staged_bytes)
            if most > limit:
                break
            time.sleep(0.01)
        release.set()
        assert most <= limit, f"{most} bytes staged, over --max-staged-bytes {limit}"
        for future in futures:
            assert future.exception(10) is not None and future.exception().code() == INVALID
            assert "send it in the round's compression" in future.exception().details()
        good = updates["good"]
        assert _send(channel, good.frames()) == (OK, "")
        thread.join(30)
        result = holder["result"]
        assert (result.num_updates, result.num_rejected) == (1, 4)
        _assert_partial(model_store, result, [(good.dense(), good.weight)])
    finally:
        release.set()
        channel.close()
        for client in clients:
            client.close()


# -- random damage ---------------------------------------------------------------------------------


@pytest.fixture
def fuzz_round(start_combiner, model_store, global_model) -> Iterator[Callable[[str, list], None]]:
    """Runs rounds on one combiner: each client sends its update with the bytes it is given written over
    its float tensors' sections (size and digest made to match), and the round's partial is checked
    against the updates accepted."""
    model_id, _ = global_model
    server, stub = start_combiner(model_store, ManualClock(), max_update_bytes=64 * 1024, chunk_bytes=1024)
    names = [f"f{i}" for i in range(6)]
    clients = _connect(server, stub, names)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    rounds = iter(range(1_000_000))

    def run(codec: str, damage: list[list[tuple[float, int]]]) -> None:
        round_id = f"r-fuzz-{next(rounds)}"
        thread, holder = _start_round(stub, _plan(model_id, codec, round_id))
        folded = []
        for seed, (client, hits) in enumerate(zip(clients, damage, strict=True)):
            task = _task(client, round_id)
            manifest, base, _ = client.download(task)
            u = _update(client.client_id, task.compression, manifest, base, seed, round_id)
            out = bytearray(u.payload)
            start = u.section("fc.weight")
            end = u.section("fc.bias") + section_bytes(next(s for s in manifest if s.name == "fc.bias"), u.codec)
            assert end - start == sum(section_bytes(s, u.codec) for s in manifest if s.dtype == "float32")
            for where, byte in hits:
                out[start + int(where * (end - start - 1))] = byte
            payload = bytes(out)
            dense = _reference(payload, u.base, u.manifest, u.codec)
            code, details = _send(channel, u.frames(payload))
            _assert_clear("damaged payload", code, details)
            assert code == (OK if dense is not None else INVALID), (code, details)
            if dense is not None:
                folded.append((dense, u.weight))
        thread.join(30)
        result = holder["result"]
        assert (result.num_updates, result.num_rejected) == (len(folded), len(clients) - len(folded))
        if folded:
            _assert_partial(model_store, result, folded)

    yield run
    channel.close()
    for client in clients:
        client.close()


_hits = st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=3)


@pytest.mark.parametrize("codec", list(SETUPS))
@settings(  # no shrinking: each example is a round on the fixture's combiner
    max_examples=5,
    deadline=None,
    database=None,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=list(HealthCheck),
)
@given(damage=st.lists(_hits, min_size=6, max_size=6))
def test_damaged_payloads_are_refused_or_folded_exactly(fuzz_round, codec, damage):
    fuzz_round(codec, damage)


@pytest.mark.parametrize(
    "refusal",
    [
        pytest.param({"num_examples": float("nan")}, id="num_examples NaN"),
        pytest.param({"payload_bytes": 5}, id="payload_bytes wrong"),
        pytest.param({"compression": ""}, id="raw with a compressed payload"),
        pytest.param({"compression": "float16"}, id="another codec"),  # refused by the round, before staging
    ],
)
def test_a_grant_is_freed_when_the_update_it_was_asked_for_is_refused(
    start_combiner, model_store, global_model, refusal
):
    """Regression: a client granted the round's one upload slot (RequestUpload) whose update was then
    refused from its header kept the grant until it lapsed (30 s by default; here, on a ManualClock,
    for ever), and every other client's upload waited behind it."""
    model_id, arrays = global_model
    limit = compressed_payload_bytes(encode_payload(arrays)[0], parse_compression("int8:block=64"))
    server, stub = start_combiner(model_store, ManualClock(), max_staged_bytes=limit, chunk_bytes=1024)  # one slot
    clients = _connect(server, stub, ["bad", "good"])
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    thread, holder = _start_round(stub, _plan(model_id, "int8"))

    def granted(u: Update) -> bool:
        request = pb.UploadRequest(round_id=ROUND, client_id=u.client_id, payload_bytes=len(u.payload))
        return stub.RequestUpload(request, timeout=10).granted

    try:
        updates = {}
        for seed, client in enumerate(clients):
            manifest, base, _ = client.download(_task(client, ROUND))
            updates[client.client_id] = _update(client.client_id, "int8:block=64", manifest, base, seed)
        bad, good = updates["bad"], updates["good"]
        assert granted(bad)
        code, details = _send(channel, bad.frames(**refusal))
        assert code == INVALID, details
        assert granted(good), "the refused client's grant is still held"
        assert _send(channel, good.frames()) == (OK, "")
        thread.join(30)
        assert (holder["result"].num_updates, holder["result"].num_rejected) == (1, 1)
    finally:
        channel.close()
        for client in clients:
            client.close()
