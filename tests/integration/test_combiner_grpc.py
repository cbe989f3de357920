"""The combiner over real gRPC: full rounds, failures, and every kind of bad update."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest

from fedn import wire
from fedn.chunking import iter_chunks
from fedn.clock import ManualClock
from fedn.codec import decode_model, decode_payload, encode_payload, sha256_hex
from fedn.records import RoundPlan
from fedn.v1 import fedn_pb2 as pb


class FakeClient:
    """A client speaking the protocol by hand: opens a task stream (announcing ``codecs``) and collects its tasks."""

    def __init__(self, stub, client_id: str, codecs: tuple[str, ...] = ()) -> None:
        self.stub, self.client_id = stub, client_id
        self.tasks: list[wire.TaskInfo] = []
        self.train_task = threading.Event()
        request = pb.TaskStreamRequest(client_id=client_id, client_name=client_id, codecs=list(codecs))
        self._call = stub.TaskStream(request)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for msg in self._call:
                task = wire.task_from_proto(msg)
                self.tasks.append(task)
                if task.kind == "train":
                    self.train_task.set()
        except grpc.RpcError:
            pass

    def wait_task(self) -> wire.TaskInfo:
        assert self.train_task.wait(20), f"{self.client_id} got no train task"
        return next(t for t in self.tasks if t.kind == "train")

    def wait_tasks(self, count: int) -> list[wire.TaskInfo]:
        """The first ``count`` train tasks, waiting for them to arrive."""
        for _ in range(400):
            train = [t for t in self.tasks if t.kind == "train"]
            if len(train) >= count:
                return train
            time.sleep(0.05)
        raise AssertionError(f"{self.client_id} got {len(train)} train tasks, expected {count}")

    def download(self, model_id: str) -> dict[str, np.ndarray]:
        chunks = list(self.stub.DownloadModel(pb.DownloadModelRequest(model_id=model_id, client_id=self.client_id)))
        header = wire.model_header_from_proto(chunks[0].header)
        payload = b"".join(c.data for c in chunks[1:])
        assert sha256_hex(payload) == header.sha256 and len(payload) == header.payload_bytes
        return {k: v.copy() for k, v in decode_payload(header.tensors, payload).items()}

    def upload(
        self,
        round_id: str,
        arrays,
        num_examples: float = 10.0,
        *,
        sha: str | None = None,
        payload: bytes | None = None,
        size: int | None = None,
        send_header: bool = True,
        metrics: dict | None = None,
        base_model_id: str = "",
    ):
        manifest, data = encode_payload(arrays)
        data = data if payload is None else payload
        header = wire.UpdateHeaderInfo(
            round_id=round_id,
            client_id=self.client_id,
            base_model_id=base_model_id,
            num_examples=num_examples,
            metrics=metrics or {"train_loss": 1.0},
            model=wire.ModelHeaderInfo("", manifest, sha or sha256_hex(data), len(data) if size is None else size),
        )

        def messages():
            if send_header:
                yield pb.UpdateChunk(header=wire.update_header_to_proto(header))
            for chunk in iter_chunks(data, 700):
                yield pb.UpdateChunk(data=chunk)

        return self.stub.UploadUpdate(messages(), timeout=10)

    def close(self) -> None:
        self._call.cancel()
        self._thread.join(5)


def _wait_for(predicate, what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _wait_connected(combiner, n: int) -> None:
    for _ in range(200):
        if len(combiner.rounds.connected_client_ids()) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"{n} clients never connected")


def _plan(model_id: str, timeout_s: float = 20.0, round_id: str = "r1") -> RoundPlan:
    return RoundPlan(
        round_id=round_id,
        session_id="s1",
        round_index=1,
        model_id=model_id,
        timeout_s=timeout_s,
        config={"epochs": 2, "lr": 0.1},
    )


def _start_round(stub, plan: RoundPlan):
    holder = {}

    def call():
        try:
            holder["result"] = wire.round_result_from_proto(stub.RunRound(wire.round_plan_to_proto(plan), timeout=60))
        except grpc.RpcError as exc:
            holder["error"] = exc

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread, holder


def _round_with(server, stub, names: list[str], plan: RoundPlan):
    """Connect a FakeClient per name, start ``plan``, and wait until each has its train task."""
    clients = [FakeClient(stub, name) for name in names]
    _wait_connected(server, len(names))
    thread, holder = _start_round(stub, plan)
    for client in clients:
        client.wait_task()
    return clients, thread, holder


def _shifted(arrays, delta: float):
    return {k: (v + delta).astype(v.dtype) for k, v in arrays.items()}


def test_full_round_partial_is_the_weighted_mean(combiner, stub, global_model, model_store):
    model_id, arrays = global_model
    clients = [FakeClient(stub, f"c{i}") for i in range(3)]
    _wait_connected(combiner, 3)
    thread, holder = _start_round(stub, _plan(model_id))
    updates, weights = [], [10.0, 30.0, 60.0]
    for i, client in enumerate(clients):
        task = client.wait_task()
        assert task.config == {"epochs": 2, "lr": 0.1} and task.round_index == 1 and task.model_id == model_id
        params = client.download(task.model_id)
        np.testing.assert_array_equal(params["fc.weight"], arrays["fc.weight"])
        update = _shifted(params, float(i + 1))
        updates.append(update)
        reply = client.upload(task.round_id, update, weights[i], metrics={"train_loss": float(i)})
        assert reply.accepted_updates == i + 1
    thread.join(30)
    result = holder["result"]
    assert (result.num_selected, result.num_updates, result.num_rejected, result.failures) == (3, 3, 0, [])
    assert result.total_weight == pytest.approx(100.0)
    assert result.metrics["train_loss"].mean == pytest.approx((0 * 10 + 1 * 30 + 2 * 60) / 100)
    partial = decode_model(model_store.get(result.partial_key))
    expected = sum(u["fc.weight"].astype(np.float64) * w for u, w in zip(updates, weights, strict=True)) / 100
    np.testing.assert_allclose(partial["fc.weight"], expected, rtol=1e-12)
    for c in clients:
        c.close()


def test_failure_disconnect_and_deadline_do_not_hang_the_round(start_combiner, loop_thread, model_store, global_model):
    model_id, _ = global_model
    clock = ManualClock()
    combiner, stub = start_combiner(model_store, clock)
    good, failing, leaving, silent = (FakeClient(stub, n) for n in ("good", "failing", "leaving", "silent"))
    _wait_connected(combiner, 4)
    thread, holder = _start_round(stub, _plan(model_id, timeout_s=3.0))
    task = good.wait_task()
    good.upload(task.round_id, good.download(model_id))
    failing.wait_task()
    stub.ReportFailure(
        pb.ReportFailureRequest(round_id=task.round_id, client_id="failing", error="ValueError: out of memory on site")
    )
    leaving.wait_task()
    leaving.close()
    silent.wait_task()
    _wait_for(lambda: len(combiner.rounds.connected_client_ids()) == 3, "the leaving client's stream to close")
    assert thread.is_alive(), "silent has not answered and the deadline has not passed"
    loop_thread.advance(clock, 3.0)
    thread.join(30)
    result = holder["result"]
    errors = {f.client_id: f.error for f in result.failures}
    assert result.num_updates == 1 and result.num_selected == 4
    assert errors["failing"] == "ValueError: out of memory on site"
    assert errors["leaving"] == "client disconnected"
    assert "deadline" in errors["silent"]
    for c in (good, failing, silent):
        c.close()


def test_zero_clients_returns_at_once(combiner, stub, global_model):
    result = stub.RunRound(wire.round_plan_to_proto(_plan(global_model[0])), timeout=10)
    assert result.num_selected == 0 and result.partial_key == ""


def test_unknown_model_and_aggregator(combiner, stub, global_model):
    with pytest.raises(grpc.RpcError) as exc:
        list(stub.DownloadModel(pb.DownloadModelRequest(model_id="nope")))
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    plan = _plan(global_model[0]).model_copy(update={"aggregator": "nonsense"})
    with pytest.raises(grpc.RpcError) as exc:
        stub.RunRound(wire.round_plan_to_proto(plan), timeout=10)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "fedavg" in exc.value.details()


def test_large_model_streams_in_odd_chunks(loop_thread, model_store, combiner, stub):
    from fedn.models import save_model

    arrays = {"w": np.arange(12_345, dtype=np.float32), "b": np.arange(7, dtype=np.int16)}
    record = save_model(model_store, arrays)
    client = FakeClient(stub, "dl")
    got = client.download(record.id)
    np.testing.assert_array_equal(got["w"], arrays["w"])
    np.testing.assert_array_equal(got["b"], arrays["b"])
    client.close()


def _bad(arrays):
    def replaced(name: str, value):  # keeps the manifest order, changes one tensor
        return {k: (value if k == name else v) for k, v in arrays.items()}

    w, b = arrays["fc.weight"], arrays["fc.bias"]
    nan_w = w.copy()
    nan_w[3, 4] = np.nan
    inf_b = b.copy()
    inf_b[0] = np.inf
    renamed = {("fc.bias_renamed" if k == "fc.bias" else k): v for k, v in arrays.items()}
    return {
        "wrong names": (renamed, {}, grpc.StatusCode.INVALID_ARGUMENT, "names"),
        "wrong shape": (replaced("fc.weight", w.T.copy()), {}, grpc.StatusCode.INVALID_ARGUMENT, "shape"),
        "wrong dtype": (replaced("fc.weight", w.astype(np.float64)), {}, grpc.StatusCode.INVALID_ARGUMENT, "dtype"),
        "nan": (replaced("fc.weight", nan_w), {}, grpc.StatusCode.INVALID_ARGUMENT, "NaN"),
        "inf": (replaced("fc.bias", inf_b), {}, grpc.StatusCode.INVALID_ARGUMENT, "Inf"),
        "sha256 mismatch": (arrays, {"sha": "0" * 64}, grpc.StatusCode.DATA_LOSS, "sha256"),
        "too large": (arrays, {"size": 10**9}, grpc.StatusCode.RESOURCE_EXHAUSTED, "limit"),
        "short stream": (arrays, {"payload": b"\0" * 10, "size": 2488}, grpc.StatusCode.INVALID_ARGUMENT, "ended"),
        "zero weight": (arrays, {"num_examples": 0.0}, grpc.StatusCode.INVALID_ARGUMENT, "num_examples"),
        "no header": (arrays, {"send_header": False}, grpc.StatusCode.INVALID_ARGUMENT, "header"),
    }


BAD_CASES = list(
    _bad(
        {
            "fc.weight": np.zeros((30, 20), np.float32),
            "fc.bias": np.zeros(20, np.float32),
            "steps": np.array(0, np.int64),
        }
    )
)


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_update_is_rejected_and_the_aggregate_is_unchanged(case, combiner, stub, global_model, model_store):
    model_id, arrays = global_model
    # A headerless stream never names its round, so that round waits for its deadline: keep it short.
    plan = _plan(model_id, timeout_s=2.0 if case == "no header" else 20.0)
    (good, bad), thread, holder = _round_with(combiner, stub, ["good", "bad"], plan)
    task = good.wait_task()
    good_update = _shifted(arrays, 1.0)
    good.upload(task.round_id, good_update, 5.0)
    update, kwargs, code, words = _bad(arrays)[case]
    with pytest.raises(grpc.RpcError) as exc:
        bad.upload(task.round_id, update, **kwargs)
    assert exc.value.code() == code, exc.value.details()
    assert words.lower() in exc.value.details().lower()
    thread.join(30)
    result = holder["result"]
    assert result.num_updates == 1
    if case != "no header":  # a stream without a header never names its round, so it cannot count against it
        assert result.num_rejected == 1
        assert "update rejected" in {f.client_id: f.error for f in result.failures}["bad"]
    partial = decode_model(model_store.get(result.partial_key))
    np.testing.assert_array_equal(partial["fc.weight"], good_update["fc.weight"].astype(np.float64))
    good.close()
    bad.close()


def test_round_state_errors(combiner, stub, global_model, model_store):
    model_id, arrays = global_model
    a, b = FakeClient(stub, "a"), FakeClient(stub, "b")
    _wait_connected(combiner, 2)
    thread, holder = _start_round(stub, _plan(model_id, timeout_s=20.0))
    task = a.wait_task()
    b.wait_task()
    with pytest.raises(grpc.RpcError) as exc:
        a.upload("no-such-round", arrays)
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "unknown" in exc.value.details()
    outsider = FakeClient(stub, "outsider")
    with pytest.raises(grpc.RpcError) as exc:
        outsider.upload(task.round_id, arrays)
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "not asked" in exc.value.details()
    a.upload(task.round_id, arrays)
    with pytest.raises(grpc.RpcError) as exc:
        a.upload(task.round_id, _shifted(arrays, 100.0))
    assert exc.value.code() == grpc.StatusCode.ALREADY_EXISTS
    rejoin, joined = _start_round(stub, _plan(model_id, timeout_s=20.0))  # a restarted reducer asks again
    b.upload(task.round_id, arrays)
    thread.join(30)
    rejoin.join(30)
    assert holder["result"].num_updates == 2
    assert joined["result"] == holder["result"]
    partial = decode_model(model_store.get(holder["result"].partial_key))
    np.testing.assert_allclose(partial["fc.weight"], arrays["fc.weight"], rtol=1e-7)  # the duplicate changed nothing
    with pytest.raises(grpc.RpcError) as exc:
        b.upload(task.round_id, arrays)
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "closed" in exc.value.details()
    for c in (a, b, outsider):
        c.close()


def test_a_new_round_supersedes_an_abandoned_one(combiner, stub, global_model):
    model_id, arrays = global_model
    silent = FakeClient(stub, "silent")
    _wait_connected(combiner, 1)
    old, old_holder = _start_round(stub, _plan(model_id, timeout_s=60.0, round_id="abandoned"))
    silent.wait_task()
    silent.train_task.clear()
    new, new_holder = _start_round(stub, _plan(model_id, timeout_s=20.0, round_id="fresh"))
    old.join(30)
    assert old_holder["result"].num_updates == 0  # returned long before its 60 s deadline
    silent.wait_task()
    task = next(t for t in reversed(silent.tasks) if t.kind == "train")
    assert task.round_id == "fresh"
    silent.upload("fresh", arrays)
    new.join(30)
    assert new_holder["result"].num_updates == 1
    silent.close()


def test_max_clients_picks_the_same_clients_for_the_same_seed(start_combiner, model_store, global_model):
    model_id, _ = global_model
    # these clients never answer: with the straggler back-off on, the next round would skip them
    combiner, stub = start_combiner(model_store, straggler_backoff_rounds=0)
    clients = [FakeClient(stub, f"s{i}") for i in range(5)]
    _wait_connected(combiner, 5)
    picked = []
    for round_id, seed in (("q1", 42), ("q2", 42), ("q3", 7)):
        for c in clients:
            c.tasks.clear()
            c.train_task.clear()
        plan = _plan(model_id, timeout_s=0.5, round_id=round_id).model_copy(
            update={"max_clients": 2, "sample_seed": seed}
        )
        result = wire.round_result_from_proto(stub.RunRound(wire.round_plan_to_proto(plan), timeout=30))
        assert result.num_selected == 2
        picked.append({f.client_id for f in result.failures})
    assert picked[0] == picked[1]
    for c in clients:
        c.close()


def test_a_median_round_over_grpc(combiner, stub, global_model, model_store):
    model_id, arrays = global_model
    clients = [FakeClient(stub, f"m{i}") for i in range(3)]
    _wait_connected(combiner, 3)
    plan = _plan(model_id).model_copy(update={"aggregator": "median"})
    thread, holder = _start_round(stub, plan)
    shifts = [1.0, 2.0, 1000.0]  # one outlier
    for client, shift in zip(clients, shifts, strict=True):
        task = client.wait_task()
        client.upload(task.round_id, _shifted(arrays, shift))
    thread.join(30)
    partial = decode_model(model_store.get(holder["result"].partial_key))
    np.testing.assert_allclose(partial["fc.weight"], arrays["fc.weight"] + 2.0, rtol=1e-5)
    for c in clients:
        c.close()


def test_a_client_without_a_free_slot_is_queued_and_granted_down_its_stream(start_combiner, model_store, global_model):
    model_id, arrays = global_model
    server, stub = start_combiner(model_store, max_concurrent_uploads=1)
    (first, second), thread, holder = _round_with(server, stub, ["first", "second"], _plan(model_id))
    round_id = first.wait_task().round_id

    def ask(client):
        return stub.RequestUpload(pb.UploadRequest(round_id=round_id, client_id=client, payload_bytes=100))

    assert ask("first").granted
    reply = ask("second")
    assert not reply.granted and reply.queued_before == 0
    first.upload(round_id, _shifted(arrays, 1.0))
    for _ in range(100):  # the grant comes down the task stream
        if any(t.kind == "upload_grant" and t.round_id == round_id for t in second.tasks):
            break
        time.sleep(0.05)
    else:
        raise AssertionError("no upload grant arrived")
    assert ask("second").granted  # asking again keeps it
    second.upload(round_id, _shifted(arrays, 2.0))
    thread.join(30)
    assert holder["result"].num_updates == 2
    with pytest.raises(grpc.RpcError) as info:
        ask("first")  # the round is closed
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as info:
        stub.RequestUpload(pb.UploadRequest(round_id=round_id, client_id="first", payload_bytes=1 << 40))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    for c in (first, second):
        c.close()


def test_the_cached_model_is_dropped_once_every_client_has_it(combiner, stub, global_model):
    model_id, arrays = global_model
    clients, thread, holder = _round_with(combiner, stub, ["c0", "c1"], _plan(model_id))
    clients[0].download(model_id)
    assert combiner.rounds.context.models.cached_model_ids() == [model_id]
    clients[1].download(model_id)
    assert combiner.rounds.context.models.cached_model_ids() == []  # both have it: the round holds no copy of the model
    np.testing.assert_array_equal(clients[0].download(model_id)["fc.weight"], arrays["fc.weight"])  # reloaded
    for i, client in enumerate(clients):
        client.upload("r1", _shifted(arrays, float(i)))
    thread.join(30)
    assert holder["result"].num_updates == 2
    for client in clients:
        client.close()


def test_a_model_above_the_cache_limit_streams_from_the_store(start_combiner, model_store, global_model):
    model_id, arrays = global_model
    server, stub = start_combiner(model_store, model_cache_bytes=0, chunk_bytes=1024)
    client = FakeClient(stub, "c0")
    _wait_connected(server, 1)
    thread, holder = _start_round(stub, _plan(model_id))
    client.wait_task()
    chunks = list(stub.DownloadModel(pb.DownloadModelRequest(model_id=model_id, client_id="c0")))
    assert all(len(c.data) <= 1024 for c in chunks[1:]) and len(chunks) > 3  # re-chunked from the file
    params = client.download(model_id)  # checks the digest and size
    for name, a in arrays.items():
        np.testing.assert_array_equal(params[name], a)
    client.upload("r1", _shifted(params, 1.0))
    thread.join(30)
    assert holder["result"].num_updates == 1
    client.close()


def test_a_streaming_method_maps_errors_like_a_unary_one(combiner, stub, global_model, monkeypatch, caplog):
    models, rounds = combiner.rounds.context.models, combiner.rounds

    async def broken_get(model_id: str):
        raise RuntimeError("disk on fire at /secret/path")

    def broken_connect(client_id: str, name: str):
        raise KeyError("secret")

    with pytest.raises(grpc.RpcError) as exc:  # a FednError: its own status and message
        list(stub.DownloadModel(pb.DownloadModelRequest(model_id="nope", client_id="c")))
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as exc:
        next(stub.TaskStream(pb.TaskStreamRequest(client_id="")))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "client_id" in exc.value.details()

    monkeypatch.setattr(models, "get", broken_get)
    monkeypatch.setattr(rounds, "connect", broken_connect)
    for call in (
        lambda: list(stub.DownloadModel(pb.DownloadModelRequest(model_id=global_model[0], client_id="c"))),
        lambda: next(stub.TaskStream(pb.TaskStreamRequest(client_id="c"))),
    ):
        with pytest.raises(grpc.RpcError) as exc:
            call()
        assert exc.value.code() == grpc.StatusCode.INTERNAL
        details = exc.value.details()
        assert details.startswith("internal error (request ") and "secret" not in details
        request_id = details.removeprefix("internal error (request ").rstrip(")")
        assert any(request_id in r.getMessage() and r.exc_info for r in caplog.records), "traceback logged"
