"""Asynchronous (FedBuff) sessions at one combiner over real gRPC: staleness math, refusals, caps, the end."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest

from fedn import wire
from fedn.models import save_model
from fedn.records import RoundPlan, SessionMode
from tests.integration.test_combiner_grpc import FakeClient, _shifted, _start_round, _wait_connected

RUN = "async-s1"


def _async_plan(model_id: str, version: int = 0, **changes) -> RoundPlan:
    fields = {
        "round_id": f"flush-{time.monotonic_ns()}",
        "session_id": "s1",
        "round_index": version + 1,
        "model_id": model_id,
        "model_version": version,
        "timeout_s": 20.0,
        "mode": SessionMode.ASYNC,
        "buffer_size": 2,
        "config": {"epochs": 1},
        **changes,
    }
    return RoundPlan(**fields)


def _announce(stub, model_id: str, version: int, final: bool = False) -> bool:
    info = wire.Announcement("s1", model_id, version, final)
    return stub.AnnounceModel(wire.announcement_to_proto(info), timeout=10).known


def _wait_for(predicate, what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_a_buffer_is_the_staleness_weighted_mean_of_deltas(combiner, stub, global_model, model_store):
    m0, arrays = global_model
    clients = [FakeClient(stub, f"c{i}") for i in range(2)]
    _wait_connected(combiner, 2)
    thread, holder = _start_round(stub, _async_plan(m0))
    first = [c.wait_tasks(1)[0] for c in clients]
    assert {(t.round_id, t.model_id, t.round_index) for t in first} == {(RUN, m0, 1)}

    clients[0].upload(RUN, _shifted(arrays, 1.0), 10.0, base_model_id=m0, metrics={"train_loss": 1.0})
    m1 = save_model(model_store, _shifted(arrays, 5.0)).id
    assert _announce(stub, m1, 1)
    clients[1].upload(RUN, _shifted(arrays, 2.0), 30.0, base_model_id=m0, metrics={"train_loss": 3.0})
    thread.join(30)
    result = holder["result"]

    assert (result.num_updates, result.num_rejected, result.failures) == (2, 0, [])
    assert result.total_weight == pytest.approx(40.0)
    assert result.client_ids == ["c0", "c1"]
    staleness = result.metrics["staleness"]
    assert (staleness.min, staleness.max, staleness.count) == (0.0, 1.0, 2)
    delta = wire_partial(model_store, result.partial_key)
    expected = (10 * 1.0 * 1.0 + 30 * 2.0 / np.sqrt(2.0)) / 40  # (1+s)^-0.5 with s = 0 and 1
    np.testing.assert_allclose(delta["fc.weight"], np.full(arrays["fc.weight"].shape, expected), rtol=1e-6)
    # clients train continuously: each got its next task at once, on the newest model it could
    assert clients[0].wait_tasks(2)[1].model_id == m0  # it answered before m1 was announced
    second = clients[1].wait_tasks(2)[1]
    assert (second.model_id, second.round_index) == (m1, 2)
    for c in clients:
        c.close()


def wire_partial(model_store, key: str) -> dict[str, np.ndarray]:
    from fedn.codec import decode_model

    return decode_model(model_store.get(key))


def test_async_refusals_are_clear_and_the_client_keeps_training(combiner, stub, global_model, model_store):
    m0, arrays = global_model
    client = FakeClient(stub, "c0")
    _wait_connected(combiner, 1)
    thread, holder = _start_round(stub, _async_plan(m0, buffer_size=5, timeout_s=5.0, max_staleness=1))
    client.wait_tasks(1)

    code, details = _code(lambda: client.upload(RUN, arrays, base_model_id="not-a-model"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "not a recent global model" in details
    client.wait_tasks(2)  # a stale update does not end the client's part: it gets the newest model at once

    m1, m2 = (save_model(model_store, _shifted(arrays, float(i))).id for i in (1, 2))
    assert _announce(stub, m1, 1) and _announce(stub, m2, 2)
    code, details = _code(lambda: client.upload(RUN, arrays, base_model_id=m0))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "2 versions stale" in details

    client.wait_tasks(3)
    nan = {k: v.copy() for k, v in arrays.items()}
    nan["fc.weight"][0, 0] = np.nan
    code, details = _code(lambda: client.upload(RUN, nan, base_model_id=m2))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "fc.weight" in details

    client.wait_tasks(4)
    assert client.upload(RUN, _shifted(arrays, 3.0), base_model_id=m2).accepted_updates == 1

    stranger = wire.update_messages(RUN, "never-connected", m2, 1.0, {}, arrays)
    code, details = _code(lambda: stub.UploadUpdate(stranger, timeout=10))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "no open task" in details

    thread.join(30)  # buffer_size 5 is never reached: the timeout flushes the one good update
    result = holder["result"]
    assert (result.num_updates, result.num_rejected) == (1, 1)
    errors = {f.client_id: f.error for f in result.failures}
    assert "update rejected" in errors["c0"] and "2 updates dropped as too stale" in errors[""]
    client.close()


def test_max_clients_caps_how_many_train_at_once(combiner, stub, global_model):
    m0, arrays = global_model
    clients = [FakeClient(stub, f"c{i}") for i in range(3)]
    _wait_connected(combiner, 3)
    thread, holder = _start_round(stub, _async_plan(m0, max_clients=1, buffer_size=3))
    order = []

    def busy() -> list[FakeClient]:
        return [c for c in clients if len(c.wait_tasks(0)) > order.count(c.client_id)]

    for _ in range(3):
        # the next task goes out in the same step that frees the slot, so any other would arrive with it
        _wait_for(lambda: busy(), "a client with a task")
        busy_now = busy()
        assert len(busy_now) == 1, "only one client may hold a task"
        order.append(busy_now[0].client_id)
        busy_now[0].upload(RUN, _shifted(arrays, 1.0), base_model_id=m0)
    thread.join(30)
    assert holder["result"].num_updates == 3
    assert sorted(order) == ["c0", "c1", "c2"], "waiting clients take turns"
    for c in clients:
        c.close()


def test_the_final_announcement_ends_the_run(combiner, stub, global_model):
    m0, arrays = global_model
    client = FakeClient(stub, "c0")
    _wait_connected(combiner, 1)
    thread, holder = _start_round(stub, _async_plan(m0, buffer_size=5))
    client.wait_tasks(1)
    client.upload(RUN, arrays, base_model_id=m0)
    client.wait_tasks(2)
    assert _announce(stub, m0, 3, final=True)
    thread.join(30)
    assert holder["result"].num_updates == 0 and not holder["result"].partial_key  # the session is over
    code, details = _code(lambda: client.upload(RUN, arrays, base_model_id=m0))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "ended" in details
    # A heartbeat goes only to a stream with nothing queued: once one arrives after the refusal, any
    # task sent after the end would have arrived before it.
    seen = len(client.tasks)
    _wait_for(lambda: any(t.kind == "heartbeat" for t in client.tasks[seen:]), "a heartbeat after the end")
    assert len(client.wait_tasks(0)) == 2, "no task after the end"
    assert not _announce(stub, m0, 4)  # nothing runs for s1 any more
    client.close()


def test_a_sync_round_ends_an_async_run_and_bad_async_plans_are_refused(combiner, stub, global_model):
    m0, arrays = global_model
    client = FakeClient(stub, "c0")
    _wait_connected(combiner, 1)
    code, details = _code(lambda: stub.RunRound(wire.round_plan_to_proto(_async_plan(m0, aggregator="median"))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "mode sync" in details
    code, _ = _code(lambda: stub.RunRound(wire.round_plan_to_proto(_async_plan(m0, buffer_size=0))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    msg = wire.round_plan_to_proto(_async_plan(m0))
    msg.mode = "bogus"
    code, details = _code(lambda: stub.RunRound(msg))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "bogus" in details

    thread, _ = _start_round(stub, _async_plan(m0, timeout_s=60.0))
    client.wait_tasks(1)
    sync_plan = RoundPlan(round_id="sync-1", session_id="s2", round_index=1, model_id=m0, timeout_s=20.0)
    sync_thread, sync_holder = _start_round(stub, sync_plan)
    task = client.wait_tasks(2)[1]
    assert task.round_id == "sync-1"
    client.upload("sync-1", _shifted(arrays, 1.0))
    sync_thread.join(30)
    assert sync_holder["result"].num_updates == 1
    thread.join(30)  # the async call returned when its run ended
    assert not thread.is_alive()
    client.close()


def test_a_large_base_is_read_from_the_store_once_not_per_update(start_combiner, model_store, global_model):
    class CountingStore:
        def __init__(self, inner) -> None:
            self.inner, self.gets = inner, 0

        def get(self, key):
            self.gets += 1
            return self.inner.get(key)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    m0, arrays = global_model
    store = CountingStore(model_store)
    server, stub = start_combiner(store, model_cache_bytes=0)
    clients = [FakeClient(stub, f"c{i}") for i in range(3)]
    _wait_connected(server, 3)
    thread, holder = _start_round(stub, _async_plan(m0, buffer_size=3))
    for i, client in enumerate(clients):
        client.wait_tasks(1)
        client.upload(RUN, _shifted(arrays, float(i + 1)), base_model_id=m0)
    thread.join(30)
    assert holder["result"].num_updates == 3
    assert store.gets == 1, "three updates on one base: one read of the base"
    for client in clients:
        client.close()
