"""Controller, sync sessions and registry with a fake combiner gateway and a manual clock: no network."""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest

from fedn.clock import ManualClock
from fedn.codec import decode_model, encode_model
from fedn.errors import DeadlineExceeded, InvalidArgument, NotFound, Unavailable
from fedn.models import model_key, partial_key, save_model
from fedn.records import (
    ClientFailureRecord,
    CombinerRecord,
    MetricSummary,
    NodeStatus,
    Round,
    RoundPlan,
    RoundResult,
    RoundStatus,
    Session,
    SessionStatus,
)
from fedn.store import LocalModelStore
from reducer.controller import Controller
from reducer.registry import CombinerRegistry
from reducer.sync_session import SyncSession


class FakeGateway:
    """Each combiner 'trains' by adding its offset to the global model, with a given weight (an array
    offset is stored as the partial itself)."""

    def __init__(self, models: LocalModelStore, behaviour: dict[str, tuple[float, float] | Exception]) -> None:
        self.models, self.behaviour, self.plans = models, behaviour, []

    def run_round(self, combiner: CombinerRecord, plan: RoundPlan, timeout_s: float) -> RoundResult:
        self.plans.append((combiner.id, plan))
        what = self.behaviour[combiner.id]
        if isinstance(what, Exception):
            raise what
        offset, weight = what
        arrays = decode_model(self.models.get(model_key(plan.model_id)))
        loss = float(np.mean(offset))
        if isinstance(offset, np.ndarray):
            partial = {k: offset for k in arrays}
        else:
            partial = {k: v.astype(np.float64) + offset for k, v in arrays.items()}
        key = partial_key(plan.round_id, combiner.id)
        self.models.put(key, encode_model(partial))
        return RoundResult(
            round_id=plan.round_id,
            combiner_id=combiner.id,
            partial_key=key,
            total_weight=weight,
            num_selected=2,
            num_updates=2,
            failures=[ClientFailureRecord(client_id="x", combiner_id=combiner.id, error="boom")],
            metrics={"train_loss": MetricSummary(mean=loss, min=loss, max=loss, count=2)},
        )

    def close(self) -> None:
        pass


def _combiners_and_seed(stores, behaviour, clock=None):
    """A registry with each combiner of ``behaviour`` online with two clients, and a stored zero seed model."""
    state, models = stores
    registry = CombinerRegistry(state, combiner_timeout_s=10.0, clock=clock)
    for cid in behaviour:
        registry.register(cid, cid, f"{cid}:1")
        registry.heartbeat(cid, [f"{cid}-c1", f"{cid}-c2"])
    seed = save_model(models, {"w": np.zeros(4, np.float32)})
    state.put_model(seed)
    return registry, seed


def _setup(stores, behaviour, *, min_clients=2, rounds=2, gateway_class=None, clock=None, round_retries=0):
    """A controller on ``clock`` (the real one if None) over the combiners of ``behaviour``; a round short
    of ``min_clients`` fails the session at once unless ``round_retries`` says otherwise."""
    state, models = stores
    registry, seed = _combiners_and_seed(stores, behaviour, clock)
    session = Session(
        rounds=rounds,
        min_clients=min_clients,
        round_timeout_s=5.0,
        seed_model_id=seed.id,
        model_id=seed.id,
        config={"epochs": 1},
    )
    state.put_session(session)
    gateway = (gateway_class or FakeGateway)(models, behaviour)
    controller = Controller(state, models, registry, gateway, rpc_grace_s=1.0, clock=clock, round_retries=round_retries)
    return controller, gateway, session, registry, clock


def test_rounds_merge_partials_by_weight(stores):
    state, models = stores
    controller, gateway, session, _, _ = _setup(stores, {"a": (1.0, 10.0), "b": (4.0, 30.0)})
    final = controller.run_session(session)
    assert final.status == SessionStatus.DONE and final.rounds_done == 2
    rounds = state.list_rounds(session.id)
    assert [r.status for r in rounds] == [RoundStatus.DONE, RoundStatus.DONE]
    # each round adds the weighted mean of offsets: (1*10 + 4*30) / 40 = 3.25
    final_w = decode_model(models.get(model_key(final.model_id)))["w"]
    np.testing.assert_allclose(final_w, np.full(4, 6.5, np.float32))
    assert final_w.dtype == np.float32
    r1 = rounds[0]
    assert r1.num_updates == 4 and r1.total_weight == 40.0 and sorted(r1.combiners) == ["a", "b"]
    assert r1.metrics["train_loss"].mean == pytest.approx(3.25)
    assert {(f.combiner_id, f.error) for f in r1.failures} == {("a", "boom"), ("b", "boom")}
    assert state.get_model(r1.model_out).parent_id == r1.model_in
    assert all(plan.config == {"epochs": 1} and plan.timeout_s == 5.0 for _, plan in gateway.plans)


@pytest.mark.parametrize(
    "error",
    [
        Unavailable("combiner b: UNAVAILABLE"),
        DeadlineExceeded("combiner b: DEADLINE_EXCEEDED"),
        InvalidArgument("combiner b: INVALID_ARGUMENT: plan refused"),  # the gateway keeps the status
    ],
)
def test_a_failing_combiner_is_recorded_and_the_round_completes(stores, error):
    state, _ = stores
    controller, _, session, _, _ = _setup(stores, {"a": (1.0, 10.0), "b": error})
    final = controller.run_session(session)
    assert final.status == SessionStatus.DONE
    round_ = state.list_rounds(session.id)[0]
    assert round_.num_updates == 2
    assert any(f.combiner_id == "b" and error.message in f.error for f in round_.failures)


class _CorruptPartialGateway(FakeGateway):
    """Combiner b reports a partial whose blob is not a model."""

    def run_round(self, combiner: CombinerRecord, plan: RoundPlan, timeout_s: float) -> RoundResult:
        result = super().run_round(combiner, plan, timeout_s)
        if combiner.id == "b":
            self.models.put(result.partial_key, b"not a model")
        return result


class BFirst:
    """Mixin for a fake gateway: combiner a's calls wait until b's first call has returned, so b's
    partial reaches the reducer first."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.b_returned = threading.Event()

    def run_round(self, combiner: CombinerRecord, plan: RoundPlan, timeout_s: float) -> RoundResult:
        if combiner.id == "a":
            assert self.b_returned.wait(10)
            return super().run_round(combiner, plan, timeout_s)
        try:
            return super().run_round(combiner, plan, timeout_s)
        finally:
            self.b_returned.set()


class _BFirstGateway(BFirst, FakeGateway):
    pass


@pytest.mark.parametrize(
    ("gateway_class", "b_offset", "reason"),
    [
        (_CorruptPartialGateway, 4.0, "partial unreadable: "),
        # b's partial comes first, yet does not set the shapes: the global model does
        (_BFirstGateway, np.zeros(5), "partial refused: tensor 'w' has shape [5], expected [4]"),
    ],
)
def test_a_partial_that_cannot_be_used_is_recorded_and_the_round_merges_the_others(
    stores, gateway_class, b_offset, reason
):
    state, models = stores
    behaviour = {"a": (1.0, 10.0), "b": (b_offset, 30.0)}
    controller, _, session, _, _ = _setup(stores, behaviour, rounds=1, gateway_class=gateway_class)
    final = controller.run_session(session)
    assert final.status == SessionStatus.DONE
    round_ = state.list_rounds(session.id)[0]
    assert round_.num_updates == 2 and round_.total_weight == 10.0  # a's alone
    refused = [f.error for f in round_.failures if f.combiner_id == "b" and f.client_id == ""]
    assert len(refused) == 1 and refused[0].startswith(reason), refused
    np.testing.assert_allclose(decode_model(models.get(model_key(final.model_id)))["w"], np.ones(4))


def test_too_few_updates_fail_round_and_session_with_the_reason(stores):
    state, _ = stores
    controller, _, session, _, _ = _setup(stores, {"a": (1.0, 10.0), "b": Unavailable("down")}, min_clients=3)
    final = controller.run_session(session)
    assert final.status == SessionStatus.FAILED
    round_ = state.list_rounds(session.id)[0]
    assert round_.status == RoundStatus.FAILED
    assert "2 updates arrived, min_clients is 3" in round_.reason and "down" in round_.reason
    assert "round 1 failed" in state.get_session(session.id).error


def _run_in_thread(controller: Controller, session: Session) -> tuple[threading.Thread, list[Session]]:
    out: list[Session] = []
    thread = threading.Thread(target=lambda: out.append(controller.run_session(session)), daemon=True)
    thread.start()
    return thread, out


def _advance_until_done(clock: ManualClock, thread: threading.Thread, step_s: float = 0.5, limit_s: float = 600.0):
    """Move the clock in steps until ``thread`` ends (each step gives it a few real ms to react)."""
    moved = 0.0
    while thread.is_alive() and moved < limit_s:
        clock.advance(step_s)
        moved += step_s
        thread.join(0.01)
    assert not thread.is_alive(), "the session did not end"


def test_not_enough_clients_fails_once_the_round_timeout_passed_on_the_clock(stores):
    state, _ = stores
    clock = ManualClock(1000.0)
    controller, _, session, _, _ = _setup(stores, {"a": (1.0, 10.0)}, min_clients=5, clock=clock)
    thread, out = _run_in_thread(controller, session)
    thread.join(0.1)
    assert thread.is_alive(), "it waits for clients while the clock stands still"
    clock.advance(session.round_timeout_s - 0.5)
    thread.join(0.05)
    assert thread.is_alive()
    _advance_until_done(clock, thread)
    assert out[0].status == SessionStatus.FAILED
    assert "only 2 clients connected" in state.list_rounds(session.id)[0].reason
    assert "round 1 failed: only 2 clients" in state.get_session(session.id).error


class _FlakyCombinerGateway(FakeGateway):
    """Combiner b is down for its first ``down_calls`` RunRound calls, then answers."""

    down_calls = 1

    def run_round(self, combiner, plan, timeout_s):
        if combiner.id == "b" and sum(c == "b" for c, _ in self.plans) < self.down_calls:
            self.plans.append((combiner.id, plan))
            raise Unavailable("combiner b died mid-round")
        return super().run_round(combiner, plan, timeout_s)


def test_a_round_short_of_min_clients_runs_again_as_a_new_attempt_after_a_back_off(stores):
    state, _ = stores
    clock = ManualClock()
    behaviour = {"a": (1.0, 10.0), "b": (4.0, 30.0)}
    controller, gateway, session, registry, _ = _setup(
        stores, behaviour, min_clients=3, rounds=1, gateway_class=_FlakyCombinerGateway, clock=clock, round_retries=2
    )
    thread, out = _run_in_thread(controller, session)
    for _ in range(500):  # the first attempt falls short, then waits 2 s on the clock
        if [c for c, _ in gateway.plans].count("b") == 1 and thread.is_alive():
            break
        thread.join(0.01)
    registry.heartbeat("b", ["b-c1", "b-c2"])  # b is back (its failed call marked it unreachable)
    thread.join(0.1)
    assert thread.is_alive()  # still backing off: no real time counts
    clock.advance(2.0)
    thread.join(5)
    assert not thread.is_alive()
    assert out[0].status == SessionStatus.DONE
    first, second = sorted(state.list_rounds(session.id), key=lambda r: r.created_at)
    assert (first.index, first.status) == (
        1,
        RoundStatus.FAILED,
    ) and "2 updates arrived, min_clients is 3" in first.reason
    assert (second.index, second.status) == (1, RoundStatus.DONE) and second.id != first.id
    assert second.num_updates == 4 and out[0].model_id == second.model_out


def test_a_round_that_stays_short_fails_the_session_after_its_retries(stores):
    state, _ = stores
    clock = ManualClock()
    controller, _, session, _, _ = _setup(
        stores, {"a": (1.0, 10.0), "b": Unavailable("down")}, min_clients=3, rounds=1, clock=clock, round_retries=1
    )
    thread, out = _run_in_thread(controller, session)
    _advance_until_done(clock, thread)
    assert out[0].status == SessionStatus.FAILED
    first, second = sorted(state.list_rounds(session.id), key=lambda r: r.created_at)
    assert first.status == second.status == RoundStatus.FAILED and first.index == second.index == 1
    assert "2 updates arrived, min_clients is 3" in first.reason
    # b's failed call took it out of the federation until it heartbeats: the last attempt waited for clients
    assert "only 2 clients connected" in second.reason
    assert "round 1 failed: only 2 clients connected" in state.get_session(session.id).error


def test_the_wait_for_clients_ends_when_enough_connect(stores):
    clock = ManualClock()
    controller, gateway, session, registry, _ = _setup(stores, {"a": (1.0, 10.0)}, min_clients=3, clock=clock)
    thread, out = _run_in_thread(controller, session.model_copy(update={"rounds": 1}))
    thread.join(0.1)
    assert thread.is_alive() and gateway.plans == []
    registry.heartbeat("a", ["a-c1", "a-c2", "a-c3"])  # no time passes: the heartbeat wakes the wait
    thread.join(5)
    assert not thread.is_alive() and clock.now() == 0.0
    assert [c for c, _ in gateway.plans] == ["a"]  # the round ran (its fake combiner reports 2 updates)
    assert "2 updates arrived, min_clients is 3" in out[0].error


def test_a_running_session_resumes_at_its_unfinished_round(stores):
    state, _ = stores
    controller, gateway, session, _, _ = _setup(stores, {"a": (1.0, 10.0)}, rounds=3)
    runner = controller.session_runner(session)
    assert isinstance(runner, SyncSession)
    runner.run_round(session, Round(session_id=session.id, index=1, model_in=session.model_id))
    session = state.get_session(session.id)
    assert session.rounds_done == 1
    # as if the reducer died while round 2 was running
    stale = Round(session_id=session.id, index=2, model_in=session.model_id, status=RoundStatus.RUNNING)
    state.put_round(stale)
    state.put_session(session.model_copy(update={"status": SessionStatus.RUNNING}))
    final = controller.run_session(state.get_session(session.id))
    rounds = state.list_rounds(session.id)
    assert final.status == SessionStatus.DONE and [r.index for r in rounds] == [1, 2, 3]
    assert rounds[1].id == stale.id and rounds[1].status == RoundStatus.DONE
    assert len(gateway.plans) == 3


@pytest.mark.parametrize("round_marked_done", [True, False])
def test_a_round_that_ended_before_a_stop_was_recorded_still_counts(stores, round_marked_done):
    """The chaos run's find: a stop requested as round 3 ended wrote the session back as it had read it
    (2 rounds done), or the reducer died between storing round 3's model and advancing the session.
    Ending the session stopped completes what ended: 3 rounds done, on round 3's model."""
    state, _ = stores
    controller, _, session, _, _ = _setup(stores, {"a": (1.0, 10.0)}, rounds=5)
    runner = controller.session_runner(session)
    for index in (1, 2, 3):
        runner.run_round(state.get_session(session.id), Round(session_id=session.id, index=index, model_in=""))
    advanced = state.get_session(session.id)
    third = state.list_rounds(session.id)[2]
    assert advanced.rounds_done == 3 and third.status == RoundStatus.DONE
    if not round_marked_done:  # died after storing the model, before marking the round
        state.put_round(third.model_copy(update={"status": RoundStatus.RUNNING, "model_out": None}))
    stale = advanced.model_copy(
        update={
            "rounds_done": 2,
            "model_id": third.model_in,
            "status": SessionStatus.RUNNING,
            "stop_requested_by": "admin",
        }
    )
    state.put_session(stale)
    final = controller.run_session(stale)
    assert final.status == SessionStatus.STOPPED and final.stopped_by == "admin"
    assert final.rounds_done == 3 and final.model_id == third.model_out
    assert state.get_session(session.id).rounds_done == 3
    assert [r.status for r in state.list_rounds(session.id)] == [RoundStatus.DONE] * 3


def test_controller_thread_runs_queued_sessions_and_stops(stores):
    state, _ = stores
    controller, _, session, _, _ = _setup(stores, {"a": (1.0, 10.0)})
    done = threading.Event()
    controller.start()
    try:
        for _ in range(200):
            if state.get_session(session.id).status == SessionStatus.DONE:
                done.set()
                break
            done.wait(0.05)
    finally:
        controller.stop()
    assert done.is_set()


def test_registry_liveness_follows_the_clock(stores):
    state, _ = stores
    clock = ManualClock(1000.0)
    registry = CombinerRegistry(state, combiner_timeout_s=10.0, clock=clock)
    registry.register("a", "a", "a:1")
    registry.heartbeat("a", ["c1"])
    clock.advance(9.0)
    assert [c.id for c in registry.live()] == ["a"]
    clock.advance(2.0)
    assert registry.live() == []
    assert state.get_combiner("a").status == NodeStatus.OFFLINE
    assert state.get_client("c1").status == NodeStatus.OFFLINE
    with pytest.raises(Unavailable):
        registry.assign("new")
    registry.heartbeat("a", ["c1"])
    assert state.get_client("c1").status == NodeStatus.ONLINE
    with pytest.raises(NotFound):
        registry.heartbeat("ghost", [])


def test_registry_assigns_least_loaded_counting_pending(stores):
    state, _ = stores
    registry = CombinerRegistry(state, combiner_timeout_s=10.0, clock=ManualClock())
    registry.register("a", "a", "a:1")
    registry.register("b", "b", "b:1")
    registry.heartbeat("a", ["x1", "x2", "x3"])
    picks = [registry.assign(f"n{i}")["combiner_id"] for i in range(4)]
    assert picks == ["b", "b", "b", "a"]


def test_a_heartbeat_from_before_the_clients_connected_does_not_forget_them(stores):
    state, _ = stores
    clock = ManualClock(1000.0)
    registry = CombinerRegistry(state, combiner_timeout_s=100.0, clock=clock)
    registry.register("a", "a", "a:1")
    registry.register("b", "b", "b:1")
    first = registry.assign("n0")
    assert first["combiner_id"] == "a"
    registry.heartbeat("a", [])  # sent before n0 had connected
    registry.heartbeat("b", [])
    picks = [registry.assign(f"n{i}")["combiner_id"] for i in (1, 2, 3)]
    assert picks == ["b", "a", "b"], "n0 still counts at a"
    registry.heartbeat("a", [first["client_id"]])  # n0 arrived: counted once, not twice
    assert registry.assign("n4")["combiner_id"] == "a"
    clock.advance(31)  # assigned clients that never connected stop counting
    registry.heartbeat("a", [first["client_id"]])
    registry.heartbeat("b", [])
    assert registry.assign("n5")["combiner_id"] == "b"


def test_a_server_optimizer_steps_on_the_merged_model_and_keeps_its_state(stores):
    import math

    state, models = stores
    controller, gateway, session, _, _ = _setup(stores, {"a": (1.0, 10.0), "b": (4.0, 30.0)}, rounds=2)
    config = {"eta": 0.5, "beta1": 0.9, "beta2": 0.99, "tau": 0.1, "eta_l": 0.02}
    session = session.model_copy(update={"strategy": "fedadam", "strategy_config": config})
    state.put_session(session)
    final = controller.run_session(session)
    assert final.status == SessionStatus.DONE and final.strategy_step == 2 and final.strategy_state_key
    # by hand, every coordinate alike: Δ = 3.25 each round (the merged offset)
    x, m, v = 0.0, 0.0, 0.1**2
    for _ in range(2):
        m = 0.9 * m + 0.1 * 3.25
        v = 0.99 * v + 0.01 * 3.25**2
        x = x + 0.5 * m / (math.sqrt(v) + 0.1)
    got = decode_model(models.get(model_key(final.model_id)))["w"]
    np.testing.assert_allclose(got, np.full(4, x, np.float32), rtol=1e-6)
    assert all(plan.config["lr"] == 0.02 for _, plan in gateway.plans)  # eta_l reaches the clients
    moments = decode_model(models.get(final.strategy_state_key))
    assert set(moments) == {"m/w", "v/w"}


def test_fraction_samples_across_combiners_in_proportion(stores):
    controller, gateway, session, registry, _ = _setup(
        stores, {"a": (1.0, 10.0), "b": (2.0, 10.0)}, min_clients=1, rounds=2
    )
    registry.heartbeat("a", ["a1", "a2", "a3", "a4", "a5", "a6"])
    session = session.model_copy(update={"fraction": 0.5, "seed": 11})
    controller.run_session(session)
    plans = {(cid, p.round_index): p for cid, p in gateway.plans}
    # 6 + 2 clients, half of them: 3 from a, 1 from b; the seed is per round and reproducible
    assert plans[("a", 1)].max_clients == 3 and plans[("b", 1)].max_clients == 1
    assert plans[("a", 1)].sample_seed == plans[("b", 1)].sample_seed != plans[("a", 2)].sample_seed


class FlakyState:
    """Wraps a state store; ``put_round`` and ``put_session`` fail while ``down`` is set."""

    def __init__(self, inner, fail_after: int) -> None:
        self._inner, self.fail_after, self.failures = inner, fail_after, 0
        self.writes = 0

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def _maybe_fail(self):
        from fedn.errors import StoreError

        self.writes += 1
        if self.writes > self.fail_after and self.failures < 3:
            self.failures += 1
            raise StoreError("connection to the state store lost")

    def put_round(self, r):
        self._maybe_fail()
        self._inner.put_round(r)

    def put_session(self, s):
        self._maybe_fail()
        self._inner.put_session(s)


def test_a_store_outage_mid_session_is_retried_and_nothing_unstored_is_done(stores, caplog):
    state, models = stores
    _, gateway, session, registry, _ = _setup(stores, {"a": (1.0, 10.0)}, rounds=3)
    flaky = FlakyState(state, fail_after=4)
    controller = Controller(flaky, models, registry, gateway, rpc_grace_s=1.0, backoff_s=0.01, max_backoff_s=0.05)
    controller.start()
    try:
        for _ in range(400):
            if state.get_session(session.id).status == SessionStatus.DONE:
                break
            threading.Event().wait(0.02)
    finally:
        controller.stop()
    final = state.get_session(session.id)
    assert final.status == SessionStatus.DONE and flaky.failures == 3
    rounds = state.list_rounds(session.id)
    assert [r.index for r in rounds] == [1, 2, 3] and all(r.status == RoundStatus.DONE for r in rounds)
    for before, after in itertools.pairwise(rounds):
        assert after.model_in == before.model_out
    assert "retrying in" in caplog.text
