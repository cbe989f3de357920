"""Over real gRPC: a client past the combiner's cap is refused, and a download whose client stopped
reading or an upload that trickles is cut off on the combiner's clock, so the next client gets through."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest

from fedn import wire
from fedn.chunking import iter_chunks
from fedn.clock import ManualClock
from fedn.codec import encode_payload, sha256_hex
from fedn.models import save_model
from fedn.records import RoundPlan
from fedn.v1 import fedn_pb2 as pb

GRACE_S, RATE = 30.0, 64 * 1024


def _wait_for(predicate, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _code(call) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code(), exc.details()
    return grpc.StatusCode.OK, ""


def test_a_task_stream_past_max_clients_is_refused_with_resource_exhausted(start_combiner, model_store):
    server, stub = start_combiner(model_store, max_clients=1)
    first = stub.TaskStream(pb.TaskStreamRequest(client_id="a", client_name="a"))
    try:
        next(first)  # connected
        second = stub.TaskStream(pb.TaskStreamRequest(client_id="b", client_name="b"), timeout=10)
        code, details = _code(lambda: next(second))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "at most 1 clients" in details
        assert server.rounds.connected_client_ids() == ["a"]
    finally:
        first.cancel()


def test_a_download_whose_client_stopped_reading_is_cut_off_and_frees_its_stream(
    start_combiner, model_store, loop_thread
):
    clock = ManualClock()
    record = save_model(model_store, {"w": np.full((32 << 20) // 4, 0.5, np.float32)})  # more than gRPC buffers
    _, stub = start_combiner(model_store, clock, max_concurrent_downloads=1, chunk_bytes=64 * 1024, model_cache_bytes=0)
    stalled = stub.DownloadModel(pb.DownloadModelRequest(model_id=record.id), timeout=60)
    next(stalled)  # the header; then it reads no more
    done: dict = {}

    def legit() -> None:
        got = list(stub.DownloadModel(pb.DownloadModelRequest(model_id=record.id), timeout=60))
        done["bytes"] = sum(len(m.data) for m in got)

    thread = threading.Thread(target=legit, daemon=True)
    thread.start()
    time.sleep(0.5)  # real time for the second call to reach the combiner and wait for the stream
    assert "bytes" not in done
    loop_thread.advance(clock, GRACE_S + record.size_bytes / RATE + 1.0)
    thread.join(30)
    assert done.get("bytes", 0) >= 32 << 20
    with pytest.raises(grpc.RpcError) as raised:  # what was buffered, then the combiner's status, not our deadline
        for _ in stalled:
            pass
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "not finished within" in raised.value.details()


def test_an_upload_that_trickles_is_cut_off_with_a_clear_status(start_combiner, model_store, loop_thread):
    clock = ManualClock()
    arrays = {"w": np.ones(4096, np.float32)}
    record = save_model(model_store, arrays)
    server, stub = start_combiner(model_store, clock, max_concurrent_uploads=1)
    call = stub.TaskStream(pb.TaskStreamRequest(client_id="a", client_name="a"))
    next(call)
    plan = RoundPlan(round_id="r1", session_id="s1", round_index=1, model_id=record.id, timeout_s=1000.0)
    round_call = stub.RunRound.future(wire.round_plan_to_proto(plan), timeout=60)
    _wait_for(lambda: server.rounds._run is not None, "the round to start")
    manifest, data = encode_payload(arrays)
    header = wire.UpdateHeaderInfo(
        "r1", "a", "", 1.0, {}, wire.ModelHeaderInfo("", manifest, sha256_hex(data), len(data))
    )
    more = threading.Event()

    def messages():
        yield pb.UpdateChunk(header=wire.update_header_to_proto(header))
        chunks = list(iter_chunks(data, 1024))
        yield pb.UpdateChunk(data=chunks[0])
        more.wait(30)  # the rest trickles in far too late
        for chunk in chunks[1:]:
            yield pb.UpdateChunk(data=chunk)

    upload = stub.UploadUpdate.future(messages(), timeout=60)
    time.sleep(0.5)  # real time for the first chunk to arrive and the slot to be taken
    assert not upload.done()
    loop_thread.advance(clock, GRACE_S + len(data) / RATE + 1.0)
    code, details = _code(upload.result)
    more.set()
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED and "not finished within" in details
    loop_thread.advance(clock, 1000.0)
    assert round_call.result(30).num_updates == 0
    call.cancel()


def test_calls_past_max_concurrent_rpcs_are_refused(start_combiner, model_store):
    _, stub = start_combiner(model_store, max_concurrent_rpcs=1)
    stream = stub.TaskStream(pb.TaskStreamRequest(client_id="a", client_name="a"))
    try:
        next(stream)  # the one call in flight
        request = pb.ReportFailureRequest(round_id="r1", client_id="a", error="x")
        code, _ = _code(lambda: stub.ReportFailure(request, timeout=10))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        stream.cancel()
