"""The client runtime against real combiners (in-process), with a fake reducer handing out addresses."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from client import Client, ClientRuntime
from combiner.server import CombinerServer
from combiner.settings import CombinerSettings
from fedn import wire
from fedn.codec import decode_model
from fedn.records import RoundPlan


class FakeReducer:
    def __init__(self, addresses: list[tuple[str, str]]) -> None:
        self.addresses, self.calls = addresses, []

    def assign_client(self, name, client_id=None):
        self.calls.append(client_id)
        combiner_id, address = self.addresses[min(len(self.calls), len(self.addresses)) - 1]
        return {"client_id": client_id or "client-1", "combiner_id": combiner_id, "combiner_address": address}


class ScriptedClient(Client):
    """Round 1: adds 1 to every float tensor. Round 2: raises. Round 3: wrong shape. Round 4: float64 output."""

    def __init__(self) -> None:
        self.configs = []

    def train(self, params, config):
        self.configs.append(config)
        r = config["round"]
        if r == 2:
            raise RuntimeError("GPU on fire")
        if r == 3:
            return {**params, "fc.bias": np.zeros(3, np.float32)}, 5, {}
        out = {k: (v + 1 if v.dtype.kind == "f" else v) for k, v in params.items()}
        if r == 4:
            out = {k: (v.astype(np.float64) if v.dtype.kind == "f" else v) for k, v in out.items()}
        return out, 7, {"train_loss": 0.5}


def _run_round(loop_thread, combiner: CombinerServer, model_id: str, index: int, timeout_s: float = 20.0):
    plan = RoundPlan(round_id=f"r{index}", session_id="s", round_index=index, model_id=model_id, timeout_s=timeout_s)
    return loop_thread.run(combiner.rounds.run_round(plan), timeout_s + 30)


def _wait(predicate, what: str) -> None:
    for _ in range(300):
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def runtime_factory():
    started = []

    def start(client, reducer, **kw) -> ClientRuntime:
        runtime = ClientRuntime(client, reducer, name="site-a", **kw)
        thread = threading.Thread(target=runtime.run, daemon=True)
        thread.start()
        started.append((runtime, thread))
        return runtime

    yield start
    for runtime, thread in started:
        runtime.stop()
        thread.join(15)
        assert not thread.is_alive(), "runtime did not stop"


def test_trains_reports_failures_and_keeps_going(loop_thread, combiner, global_model, model_store, runtime_factory):
    model_id, arrays = global_model
    user = ScriptedClient()
    runtime_factory(user, FakeReducer([("combiner-t", f"127.0.0.1:{combiner.port}")]))
    _wait(lambda: combiner.rounds.connected_client_ids() == ["client-1"], "the client to connect")

    r1 = _run_round(loop_thread, combiner, model_id, 1)
    assert (r1.num_updates, r1.failures) == (1, [])
    partial = decode_model(model_store.get(r1.partial_key))
    np.testing.assert_allclose(partial["fc.weight"], arrays["fc.weight"] + 1, rtol=1e-6)
    assert user.configs[0] == {"round": 1}

    r2 = _run_round(loop_thread, combiner, model_id, 2)
    assert r2.num_updates == 0 and r2.failures[0].error == "RuntimeError: GPU on fire"

    r3 = _run_round(loop_thread, combiner, model_id, 3)
    assert r3.num_updates == 0 and "shape" in r3.failures[0].error

    r4 = _run_round(loop_thread, combiner, model_id, 4)  # float64 output is cast back to float32
    assert r4.num_updates == 1


def test_rejected_update_is_logged_and_the_client_stays(loop_thread, combiner, global_model, runtime_factory, caplog):
    model_id, _ = global_model

    class NaNClient(Client):
        def train(self, params, config):
            if config["round"] == 1:
                return {k: np.full_like(v, np.nan) if v.dtype.kind == "f" else v for k, v in params.items()}, 1, {}
            return params, 1, {}

    runtime_factory(NaNClient(), FakeReducer([("combiner-t", f"127.0.0.1:{combiner.port}")]))
    _wait(lambda: len(combiner.rounds.connected_client_ids()) == 1, "the client to connect")
    r1 = _run_round(loop_thread, combiner, model_id, 1)
    assert r1.num_rejected == 1 and "NaN" in r1.failures[0].error
    _wait(lambda: "update not taken by the combiner: INVALID_ARGUMENT" in caplog.text, "the rejection to be logged")
    assert _run_round(loop_thread, combiner, model_id, 2).num_updates == 1


def test_moves_to_another_combiner_when_its_combiner_dies(
    loop_thread, combiner, model_store, global_model, runtime_factory
):
    model_id, _ = global_model
    second = CombinerServer(CombinerSettings(name="combiner-2", port=0, heartbeat_interval_s=0.2), model_store)
    loop_thread.run(second.start())
    try:
        reducer = FakeReducer(
            [("combiner-t", f"127.0.0.1:{combiner.port}"), ("combiner-2", f"127.0.0.1:{second.port}")]
        )
        runtime = runtime_factory(ScriptedClient(), reducer, heartbeat_timeout_s=1.0)
        _wait(lambda: len(combiner.rounds.connected_client_ids()) == 1, "the first connection")
        loop_thread.run(combiner.stop(0.1))
        _wait(lambda: second.rounds.connected_client_ids() == ["client-1"], "the client to move")
        assert reducer.calls[1:] == ["client-1"] * (len(reducer.calls) - 1)  # it keeps its id
        assert runtime.combiner_id == "combiner-2"
        assert _run_round(loop_thread, second, model_id, 1).num_updates == 1
    finally:
        loop_thread.run(second.stop(0.1))


def test_waits_as_long_as_the_combiner_says_its_heartbeats_are_apart(loop_thread, model_store, runtime_factory):
    # one heartbeat every 2 s (one client, at most half a heartbeat a second), against a client that would
    # give up after 0.5 s of silence: it takes the announced interval, and stays on its stream
    slow = CombinerServer(
        CombinerSettings(name="combiner-s", port=0, heartbeat_interval_s=0.2, max_heartbeats_per_s=0.5), model_store
    )
    loop_thread.run(slow.start())
    try:
        reducer = FakeReducer([("combiner-s", f"127.0.0.1:{slow.port}")])
        runtime = runtime_factory(Client(), reducer, heartbeat_timeout_s=0.5)
        _wait(lambda: slow.rounds.connected_client_ids() == ["client-1"], "the client to connect")
        assert slow.rounds.heartbeat().timeout_s == 2.0
        time.sleep(4.5)  # two intervals: with 0.5 s it would have left and asked again 8 times
        assert reducer.calls == [None] and runtime.combiner_id == "combiner-s"
    finally:
        loop_thread.run(slow.stop(0.1))


def test_an_announced_interval_stretches_the_silence_a_client_waits_but_only_so_far():
    from client.runtime import MAX_SILENCE_S

    runtime = ClientRuntime(Client(), FakeReducer([]), name="site-a", heartbeat_timeout_s=10.0)
    seen = []
    for interval in (0.0, 1.0, 5.0, 1e7):
        runtime._heard(wire.TaskInfo("heartbeat", timeout_s=interval))
        seen.append(runtime._silence_s)
    assert seen == [10.0, 10.0, 15.0, MAX_SILENCE_S]  # its own timeout, 3 intervals, at most 10 minutes


def test_leaves_a_combiner_that_sends_a_task_it_cannot_take(runtime_factory, caplog):
    # a heartbeat whose interval is NaN (a broken or hostile combiner): the client logs it, leaves the
    # stream and asks the reducer again; it does not wait forever or crash
    from concurrent import futures

    import grpc

    from fedn.v1 import fedn_pb2 as pb
    from fedn.v1 import fedn_pb2_grpc as pb_grpc

    class Broken(pb_grpc.CombinerServicer):
        def TaskStream(self, request, context):
            yield pb.Task(kind=pb.TASK_KIND_HEARTBEAT, timeout_s=float("nan"))
            time.sleep(30)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_CombinerServicer_to_server(Broken(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        reducer = FakeReducer([("broken", f"127.0.0.1:{port}")])
        runtime_factory(Client(), reducer, heartbeat_timeout_s=60.0, backoff_max_s=0.05)
        _wait(lambda: len(reducer.calls) >= 2, "the client to ask the reducer again")
        assert "combiner broken sent a task this client cannot take: task timeout_s must be" in caplog.text
    finally:
        server.stop(0)


def test_keeps_asking_while_the_reducer_has_no_combiner(runtime_factory):
    from fedn.errors import Unavailable

    class NoCombiner:
        calls = 0

        def assign_client(self, name, client_id=None):
            NoCombiner.calls += 1
            raise Unavailable("no live combiner")

    runtime_factory(Client(), NoCombiner(), backoff_max_s=0.05)
    _wait(lambda: NoCombiner.calls >= 3, "retries")


def test_task_config_round_trip():
    task = wire.TaskInfo("train", "r", "s", "m", 3, 1.5, {"lr": 0.1, "name": "x", "on": True, "n": 2})
    assert wire.task_from_proto(wire.task_to_proto(task)) == task
