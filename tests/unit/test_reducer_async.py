"""The reducer's async (FedBuff) sessions with a fake gateway: flushes merged into versions, resume, failures."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from fedn.clock import ManualClock
from fedn.codec import decode_model, encode_model
from fedn.errors import InvalidArgument, Unavailable
from fedn.models import model_key, partial_key
from fedn.records import (
    CombinerRecord,
    MetricSummary,
    Round,
    RoundPlan,
    RoundResult,
    RoundStatus,
    Session,
    SessionMode,
    SessionStatus,
)
from fedn.store import LocalModelStore
from fedn.wire import Announcement
from reducer.controller import Controller
from tests.unit.test_reducer_controller import BFirst, _combiners_and_seed, _run_in_thread


class AsyncGateway:
    """Each call returns at once with a buffer whose mean delta is ``delta`` (or raises, or is empty)."""

    def __init__(self, models: LocalModelStore, behaviour: dict[str, float | np.ndarray | Exception | None]) -> None:
        self.models, self.behaviour = models, behaviour
        self.plans: list[tuple[str, RoundPlan]] = []
        self.announcements: list[tuple[str, Announcement]] = []
        self.lock = threading.Lock()

    def run_round(self, combiner: CombinerRecord, plan: RoundPlan, timeout_s: float) -> RoundResult:
        with self.lock:
            self.plans.append((combiner.id, plan))
        what = self.behaviour[combiner.id]
        if isinstance(what, Exception):
            raise what
        if what is None:
            return RoundResult(round_id=plan.round_id, combiner_id=combiner.id)
        key = partial_key(plan.round_id, combiner.id)
        self.models.put(key, encode_model({"w": what if isinstance(what, np.ndarray) else np.full(4, what)}))
        return RoundResult(
            round_id=plan.round_id,
            combiner_id=combiner.id,
            partial_key=key,
            total_weight=20.0,
            num_selected=2,
            num_updates=2,
            metrics={"staleness": MetricSummary(mean=0.5, min=0, max=1, count=2)},
        )

    def announce(self, combiner: CombinerRecord, info: Announcement, timeout_s: float) -> bool:
        with self.lock:
            self.announcements.append((combiner.id, info))
        return True

    def close(self) -> None:
        pass


def _setup(stores, behaviour, *, rounds=4, timeout_s=5.0, gateway_class=None, clock=None):
    state, models = stores
    registry, seed = _combiners_and_seed(stores, behaviour, clock)
    session = Session(
        rounds=rounds,
        round_timeout_s=timeout_s,
        seed_model_id=seed.id,
        model_id=seed.id,
        mode=SessionMode.ASYNC,
        buffer_size=2,
        max_staleness=3,
    )
    state.put_session(session)
    gateway = (gateway_class or AsyncGateway)(models, behaviour)
    return Controller(state, models, registry, gateway, rpc_grace_s=0.1, clock=clock), gateway, session


def _w(models, model_id):
    return decode_model(models.get(model_key(model_id)))["w"]


def test_each_partial_is_merged_at_once_into_the_next_version(stores):
    state, models = stores
    controller, gateway, session = _setup(stores, {"a": 1.0, "b": 1.0})
    final = controller.run_session(session)
    assert final.status == SessionStatus.DONE and final.rounds_done == 4
    rounds = state.list_rounds(session.id)
    assert [r.index for r in rounds] == [1, 2, 3, 4]
    assert all(r.status == RoundStatus.DONE and len(r.combiners) == 1 and r.num_updates == 2 for r in rounds)
    assert [r.model_in for r in rounds[1:]] == [r.model_out for r in rounds[:-1]]
    np.testing.assert_allclose(_w(models, final.model_id), np.full(4, 4.0))  # global + mean delta, four times
    plans = [p for _, p in gateway.plans]
    assert all(p.mode == SessionMode.ASYNC and p.buffer_size == 2 and p.max_staleness == 3 for p in plans)
    assert all(p.model_version == p.round_index - 1 for p in plans)
    finals = [(c, a) for c, a in gateway.announcements if a.final]
    assert sorted(c for c, _ in finals) == ["a", "b"] and all(a.model_id == final.model_id for _, a in finals)
    versions = sorted({a.model_version for _, a in gateway.announcements if not a.final})
    assert versions == [1, 2, 3]


def test_a_server_optimizer_steps_on_each_merge(stores):
    _, models = stores
    controller, _, session = _setup(stores, {"a": 1.0}, rounds=2)
    session = session.model_copy(update={"strategy": "fedavgm", "strategy_config": {"eta": 1.0, "momentum": 0.5}})
    final = controller.run_session(session)
    # m1 = 1; x1 = 1. m2 = 0.5 * 1 + 1 = 1.5; x2 = 2.5
    np.testing.assert_allclose(_w(models, final.model_id), np.full(4, 2.5))
    assert final.strategy_step == 2 and final.strategy_state_key


@pytest.mark.parametrize("error", [Unavailable("combiner b: UNAVAILABLE"), InvalidArgument("combiner b: refused")])
def test_a_failing_combiner_is_retried_while_the_other_carries_on(stores, error):
    controller, gateway, session = _setup(stores, {"a": 1.0, "b": error})
    final = controller.run_session(session)
    assert final.status == SessionStatus.DONE
    assert {c for c, _ in gateway.plans} == {"a", "b"}


class _BFirstAsyncGateway(BFirst, AsyncGateway):
    pass


def test_a_partial_that_does_not_fit_the_global_model_is_refused_and_the_session_goes_on(stores):
    state, models = stores
    controller, _, session = _setup(stores, {"a": 1.0, "b": np.zeros(5)}, gateway_class=_BFirstAsyncGateway)
    final = controller.run_session(session)
    assert final.status == SessionStatus.DONE and final.rounds_done == 4
    rounds = state.list_rounds(session.id)
    done = [r for r in rounds if r.status == RoundStatus.DONE]
    assert [r.index for r in done] == [1, 2, 3, 4] and all(r.combiners == ["a"] for r in done)
    refused = [r for r in rounds if r.status == RoundStatus.FAILED]
    assert refused and all(r.combiners == ["b"] for r in refused)
    assert refused[0].reason.startswith("partial refused: tensor 'w' has shape [5], expected [4]")
    np.testing.assert_allclose(_w(models, final.model_id), np.full(4, 4.0))  # a's deltas alone


class _HoldingGateway(AsyncGateway):
    """Like a combiner whose buffer never fills: each call is held until ``release`` is set."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.called, self.release, self.calls = threading.Event(), threading.Event(), 0

    def run_round(self, combiner: CombinerRecord, plan: RoundPlan, timeout_s: float) -> RoundResult:
        self.calls += 1
        self.called.set()
        self.release.wait(10)
        return super().run_round(combiner, plan, timeout_s)


def test_no_partial_within_the_timeout_fails_the_session(stores):
    state, _ = stores
    clock = ManualClock()
    controller, gateway, session = _setup(
        stores, {"a": None}, timeout_s=30.0, clock=clock, gateway_class=_HoldingGateway
    )
    thread, out = _run_in_thread(controller, session)
    try:
        assert gateway.called.wait(5), "its combiner is called"
        clock.advance(30.0)  # round_timeout_s + rpc_grace_s is 30.1
        thread.join(0.1)
        assert thread.is_alive()
        clock.advance(0.1)
        thread.join(5)
    finally:
        gateway.release.set()
    assert not thread.is_alive()
    final = out[0]
    assert final.status == SessionStatus.FAILED and "no combiner sent a partial for 30s" in final.error
    assert state.get_session(session.id).status == SessionStatus.FAILED
    assert gateway.calls == 1  # one call held, not one per poll


def test_a_merge_cut_short_by_a_reducer_restart_is_finished_from_its_stored_partial(stores):
    state, models = stores
    controller, gateway, session = _setup(stores, {"a": 1.0}, rounds=1)
    leftover = Round(
        session_id=session.id,
        index=1,
        model_in=session.model_id,
        status=RoundStatus.RUNNING,
        combiners=["a"],
        num_updates=2,
    )
    models.put(partial_key(leftover.id, "a"), encode_model({"w": np.full(4, 3.0)}))
    state.put_round(leftover)
    lost = Round(session_id=session.id, index=7, model_in=session.model_id, status=RoundStatus.RUNNING)
    state.put_round(lost)
    final = controller.run_session(session.model_copy(update={"status": SessionStatus.RUNNING}))
    assert final.status == SessionStatus.DONE and gateway.plans == []
    np.testing.assert_allclose(_w(models, final.model_id), np.full(4, 3.0))
    rounds = {r.id: r for r in state.list_rounds(session.id)}
    assert rounds[leftover.id].status == RoundStatus.DONE
    assert rounds[lost.id].status == RoundStatus.FAILED and "partial is gone" in rounds[lost.id].reason
