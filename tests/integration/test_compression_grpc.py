"""Compressed updates and models over real gRPC: negotiation, folding, and refusal of bad payloads."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest

from fedn import wire
from fedn.codec import decode_model, decode_payload, encode_payload, payload_bytes, sha256_hex
from fedn.compression import (
    compressed_payload_bytes,
    decode_model_downlink,
    decode_update,
    downlink_payload_bytes,
    encode_update,
    parse_compression,
)
from fedn.models import save_model
from fedn.records import RoundPlan
from fedn.v1 import fedn_pb2 as pb
from tests.integration.test_combiner_grpc import FakeClient

ALL_CODECS = ("float16", "int8", "topk")


class CodecClient(FakeClient):
    """A client speaking the protocol by hand, announcing ``codecs`` on its task stream."""

    def __init__(self, stub, client_id: str, codecs=ALL_CODECS) -> None:
        super().__init__(stub, client_id, tuple(codecs))

    def download(self, task: wire.TaskInfo) -> tuple[list, dict[str, np.ndarray], int]:
        """(manifest, the model as received, payload bytes received)."""
        request = pb.DownloadModelRequest(
            model_id=task.model_id, client_id=self.client_id, compression=task.downlink_compression
        )
        chunks = list(self.stub.DownloadModel(request, timeout=10))
        header = wire.model_header_from_proto(chunks[0].header)
        payload = b"".join(c.data for c in chunks[1:])
        assert sha256_hex(payload) == header.sha256 and len(payload) == header.payload_bytes
        codec = parse_compression(task.downlink_compression)
        if codec.lossless:
            arrays = decode_payload(header.tensors, payload)
        else:
            arrays = decode_model_downlink(payload, header.tensors, codec)
        return header.tensors, {k: v.copy() for k, v in arrays.items()}, len(payload)

    def upload(self, task: wire.TaskInfo, manifest, payload: bytes, compression: str, weight: float = 10.0):
        messages = wire.update_payload_messages(
            task.round_id, self.client_id, task.model_id, weight, {}, manifest, payload, compression=compression
        )
        return self.stub.UploadUpdate(iter(list(messages)), timeout=10)

    def close(self) -> None:
        self._call.cancel()
        self._thread.join(5)


def _connect(combiner, stub, names, codecs=ALL_CODECS, *, connected: int = 0) -> list[CodecClient]:
    """New clients, once all of them (and ``connected`` already there) are connected."""
    clients = [CodecClient(stub, name, codecs) for name in names]
    deadline = time.monotonic() + 10
    while len(combiner.rounds.connected_client_ids()) < connected + len(names):
        assert time.monotonic() < deadline, "clients never connected"
        time.sleep(0.02)
    return clients


def _start_round(stub, plan: RoundPlan):
    holder: dict = {}

    def call():
        holder["result"] = wire.round_result_from_proto(stub.RunRound(wire.round_plan_to_proto(plan), timeout=60))

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread, holder


def _plan(model_id: str, compression: str, downlink: str = "none") -> RoundPlan:
    return RoundPlan(
        round_id="r1",
        session_id="s1",
        round_index=1,
        model_id=model_id,
        timeout_s=20.0,
        compression=parse_compression(compression).text(),
        downlink_compression=parse_compression(downlink).text(),
    )


def _trained(base: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, value in base.items():
        if value.dtype.kind == "f":
            out[name] = (value + rng.normal(0, 0.1, value.shape)).astype(value.dtype)
        else:
            out[name] = value + seed  # a counter: carried raw
    return out


def _expected_mean(updates, weights) -> dict[str, np.ndarray]:
    total = sum(weights)
    return {
        name: sum(u[name].astype(np.float64) * w for u, w in zip(updates, weights, strict=True)) / total
        for name in updates[0]
    }


def test_int8_uplink_and_float16_downlink_round_is_the_weighted_mean_of_what_was_sent(
    combiner, stub, global_model, model_store
):
    model_id, arrays = global_model
    plan = _plan(model_id, "int8", "float16")
    codec = parse_compression(plan.compression)
    compressing = _connect(combiner, stub, ["a", "b"])
    (plain,) = _connect(combiner, stub, ["plain"], codecs=(), connected=2)  # announces no codecs
    thread, holder = _start_round(stub, plan)
    updates, weights, sent = [], [10.0, 30.0, 60.0], 0
    for i, client in enumerate(compressing):
        task = client.wait_task()
        assert (task.compression, task.downlink_compression) == ("int8:block=256", "float16")
        manifest, base, received = client.download(task)
        assert received == downlink_payload_bytes(manifest, parse_compression("float16")) < payload_bytes(manifest)
        np.testing.assert_allclose(base["fc.weight"], arrays["fc.weight"], rtol=1e-3, atol=1e-3)
        trained = _trained(base, seed=i + 1)
        payload = encode_update(trained, base, manifest, codec, rng=np.random.default_rng(i), residual={})
        assert len(payload) == compressed_payload_bytes(manifest, codec)
        assert len(payload) < 0.3 * payload_bytes(manifest)  # about a quarter of float32
        decoded = {k: t.to_numpy() for k, t in decode_update(payload, base, manifest, codec).items()}
        np.testing.assert_allclose(decoded["fc.weight"], trained["fc.weight"], atol=0.01)
        updates.append(decoded)
        sent += len(payload)
        assert client.upload(task, manifest, payload, task.compression, weights[i]).accepted_updates == i + 1
    task = plain.wait_task()
    assert (task.compression, task.downlink_compression) == ("none", "none")
    manifest, base, _ = plain.download(task)
    np.testing.assert_array_equal(base["fc.weight"], arrays["fc.weight"])
    trained = _trained(base, seed=9)
    manifest, raw = encode_payload(trained)
    plain.upload(task, manifest, raw, "", weights[2])
    updates.append(trained)
    thread.join(30)
    result = holder["result"]
    assert (result.num_updates, result.num_rejected, result.failures) == (3, 0, [])
    assert result.uplink_bytes == sent + len(raw)
    partial = decode_model(model_store.get(result.partial_key))
    expected = _expected_mean(updates, weights)
    for name in ("fc.weight", "fc.bias"):
        np.testing.assert_allclose(partial[name], expected[name], rtol=1e-5, atol=1e-6)
    for client in [*compressing, plain]:
        client.close()


def test_topk_round_and_its_malformed_payloads_are_refused_leaving_the_aggregate_untouched(
    combiner, stub, global_model, model_store
):
    model_id, _ = global_model
    plan = _plan(model_id, "topk:ratio=0.1")
    codec = parse_compression(plan.compression)
    bad_index, bad_value, good = _connect(combiner, stub, ["bad-index", "bad-value", "good"])
    thread, holder = _start_round(stub, plan)
    task = good.wait_task()
    manifest, base, _ = good.download(task)
    payload = encode_update(_trained(base, 3), base, manifest, codec, rng=np.random.default_rng(0))
    k = 60  # fc.weight (30 x 20) keeps ceil(0.1 * 600) entries: k uint32 indices, then k float32 values
    offsets = {}
    offset = 0
    for spec in manifest:
        offsets[spec.name] = offset
        offset += compressed_payload_bytes([spec], codec)
    weight_at = offsets["fc.weight"]
    out_of_range = bytearray(payload)
    out_of_range[weight_at + 4 * (k - 1) : weight_at + 4 * k] = np.array([600], "<u4").tobytes()
    nan_value = bytearray(payload)
    nan_value[weight_at + 4 * k : weight_at + 4 * k + 4] = np.array([np.nan], "<f4").tobytes()
    for client, bad, message in (
        (bad_index, out_of_range, "topk index is out of range"),
        (bad_value, nan_value, "NaN"),
    ):
        bad_task = client.wait_task()
        with pytest.raises(grpc.RpcError) as caught:
            client.upload(bad_task, manifest, bytes(bad), bad_task.compression)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in caught.value.details()
    assert good.upload(task, manifest, payload, task.compression).accepted_updates == 1
    thread.join(30)
    result = holder["result"]
    assert (result.num_updates, result.num_rejected) == (1, 2)
    partial = decode_model(model_store.get(result.partial_key))
    decoded = decode_update(payload, base, manifest, codec)
    np.testing.assert_allclose(partial["fc.weight"], decoded["fc.weight"].to_numpy(), rtol=1e-6)
    for client in (bad_index, bad_value, good):
        client.close()


def test_an_update_in_another_codec_or_malformed_is_refused_and_the_round_goes_on(
    combiner, stub, global_model, model_store, caplog
):
    model_id, _ = global_model
    plan = _plan(model_id, "int8:block=64")
    codec = parse_compression(plan.compression)
    other, truncated, nan_scale, good = _connect(combiner, stub, ["other", "truncated", "nan-scale", "good"])
    thread, holder = _start_round(stub, plan)
    task = good.wait_task()
    manifest, base, _ = good.download(task)
    trained = _trained(base, 5)
    payload = encode_update(trained, base, manifest, codec, rng=np.random.default_rng(0))
    float16 = parse_compression("float16")
    as_float16 = encode_update(trained, base, manifest, float16, rng=np.random.default_rng(0))
    scale_at = next(i for i, spec in enumerate(manifest) if spec.dtype == "float32")
    first_scale = sum(compressed_payload_bytes([s], codec) for s in manifest[:scale_at])
    with_nan = bytearray(payload)
    with_nan[first_scale : first_scale + 4] = np.array([np.nan], "<f4").tobytes()
    cases = (
        (other, as_float16, "float16", "takes 'int8:block=64' or uncompressed"),
        (truncated, payload[:-10], task.compression, "header announces"),
        (nan_scale, bytes(with_nan), task.compression, "scales contain NaN"),
    )
    for client, bad, text, message in cases:
        bad_task = client.wait_task()
        with pytest.raises(grpc.RpcError) as caught:
            client.upload(bad_task, manifest, bad, text)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
        assert message in caught.value.details()
    assert "rejected update from client other" in caplog.text
    with pytest.raises(grpc.RpcError) as caught:  # a download in a codec the round does not send
        list(stub.DownloadModel(pb.DownloadModelRequest(model_id=model_id, client_id="good", compression="float16")))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert good.upload(task, manifest, payload, task.compression).accepted_updates == 1
    thread.join(30)
    result = holder["result"]
    assert (result.num_updates, result.num_rejected) == (1, 3)
    assert result.uplink_bytes == len(payload)
    partial = decode_model(model_store.get(result.partial_key))
    decoded = decode_update(payload, base, manifest, codec)
    np.testing.assert_allclose(partial["fc.bias"], decoded["fc.bias"].to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(partial["fc.weight"], decoded["fc.weight"].to_numpy(), rtol=1e-6)
    for client in (other, truncated, nan_scale, good):
        client.close()


def test_a_spooled_compressed_update_is_folded_from_its_file(start_combiner, model_store):
    rng = np.random.default_rng(1)
    arrays = {"w": rng.standard_normal(300_000).astype(np.float32)}
    record = save_model(model_store, arrays)
    combiner, stub = start_combiner(model_store, spool_over_bytes=64 * 1024)
    plan = _plan(record.id, "float16")
    (client,) = _connect(combiner, stub, ["big"])
    thread, holder = _start_round(stub, plan)
    task = client.wait_task()
    manifest, base, _ = client.download(task)
    codec = parse_compression("float16")
    payload = encode_update(_trained(base, 1), base, manifest, codec, rng=np.random.default_rng(0))
    assert len(payload) > 64 * 1024  # spooled: over spool_over_bytes
    client.upload(task, manifest, payload, task.compression)
    thread.join(30)
    result = holder["result"]
    assert result.num_updates == 1
    partial = decode_model(model_store.get(result.partial_key))
    np.testing.assert_allclose(partial["w"], decode_update(payload, base, manifest, codec)["w"].to_numpy(), rtol=1e-6)
    client.close()


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_a_federation_trains_digits_with_int8_updates_and_a_float16_model(tmp_path):
    """Reducer, 2 combiners and 2 client processes: the session's codecs reach the clients, and the
    rounds record the compressed bytes they sent."""
    from examples.digits import DigitsClient
    from fedn.cli.sessions import wait_for_session
    from fedn.codec import encode_model
    from fedn.launcher import FederationSpec, LocalFederation
    from fedn.records import SessionStatus
    from tests.e2e.conftest import CLIENT, accuracy_of

    spec = FederationSpec(
        client=CLIENT, num_combiners=2, num_clients=2, workdir=tmp_path / "fed", combiner_heartbeat_s=0.25
    )
    fed = LocalFederation(spec)
    try:
        fed.start()
        fed.start_clients()
        with fed.api() as api:
            seed = api.upload_model(encode_model(DigitsClient().initial_parameters()))
            session = api.start_session(
                rounds=2,
                min_clients=2,
                round_timeout_s=60.0,
                config={"epochs": 2},
                model_id=seed.id,
                compression="int8",
                downlink_compression="float16",
                evaluate_every=0,
            )
            assert (session.compression, session.downlink_compression) == ("int8:block=256", "float16")
            session = wait_for_session(api, session.id, poll_s=0.2, timeout_s=100)
            assert session.status == SessionStatus.DONE, session.error
            rounds = api.list_rounds(session.id)
            raw = api.get_model(seed.id).size_bytes
            for r in rounds:
                assert r.num_updates == 2 and r.num_rejected == 0 and len(r.combiners) == 2
                assert 0 < r.uplink_bytes < 0.3 * 2 * raw  # int8: about a quarter of float32
            final = accuracy_of(api.download_model(rounds[-1].model_out))
            assert final > accuracy_of(api.download_model(seed.id)) + 0.2
    finally:
        fed.stop()
    assert all(not p.is_running() for p in fed.processes)
