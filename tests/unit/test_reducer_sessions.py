"""Sync and async sessions driven directly through the shared planner and merger on a manual clock,
the one way a session fails, and the gateway keeping a combiner's gRPC status (with a fake stub)."""

from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest

from fedn.clock import ManualClock
from fedn.codec import decode_model
from fedn.errors import DeadlineExceeded, FednError, InvalidArgument, NotFound, Unavailable
from fedn.models import model_key, save_model
from fedn.records import (
    CombinerRecord,
    Round,
    RoundPlan,
    RoundResult,
    RoundStatus,
    Session,
    SessionMode,
    SessionStatus,
)
from fedn.wire import Announcement
from reducer.async_session import AsyncSession
from reducer.gateway import GrpcCombinerGateway
from reducer.merging import Merger
from reducer.planning import Planner
from reducer.registry import CombinerRegistry
from reducer.sync_session import SyncSession
from tests.unit.test_reducer_async import AsyncGateway
from tests.unit.test_reducer_async import _setup as _async_setup
from tests.unit.test_reducer_controller import FakeGateway, _run_in_thread
from tests.unit.test_reducer_controller import _setup as _sync_setup


def _shared(stores, registry, clock, *, rpc_grace_s=1.0):
    state, models = stores
    stop = threading.Event()
    return Planner(registry, stop, rpc_grace_s=rpc_grace_s), Merger(state, models, clock), stop


class _SlowGateway(FakeGateway):
    """Each combiner takes 7 s of the manual clock to answer."""

    def __init__(self, models, behaviour, clock: ManualClock) -> None:
        super().__init__(models, behaviour)
        self.clock = clock

    def run_round(self, combiner: CombinerRecord, plan: RoundPlan, timeout_s: float) -> RoundResult:
        self.clock.advance(7.0)
        return super().run_round(combiner, plan, timeout_s)


def test_a_sync_session_plans_and_merges_through_the_shared_pieces_on_the_clock(stores):
    state, models = stores
    clock = ManualClock(100.0)
    _, _, session, registry, _ = _sync_setup(stores, {"a": (1.0, 10.0)}, rounds=2, clock=clock)
    planner, merger, stop = _shared(stores, registry, clock)
    gateway = _SlowGateway(models, {"a": (1.0, 10.0)}, clock)
    final = SyncSession(state, models, gateway, planner, merger, clock, stop).run(session)
    assert final.rounds_done == 2 and final.status == SessionStatus.PENDING  # the controller marks it done
    rounds = state.list_rounds(session.id)
    assert [r.duration_s for r in rounds] == [7.0, 7.0]  # measured on the clock, not on real time
    assert [p.round_index for _, p in gateway.plans] == [1, 2]
    assert all(p.mode == SessionMode.SYNC and p.model_version == 0 for _, p in gateway.plans)


def test_a_stopped_sync_session_leaves_its_round_running_for_the_next_reducer(stores):
    state, models = stores
    clock = ManualClock()
    _, _, session, registry, _ = _sync_setup(stores, {"a": (1.0, 10.0)}, clock=clock)
    planner, merger, stop = _shared(stores, registry, clock)

    class StoppingGateway(FakeGateway):
        def run_round(self, combiner, plan, timeout_s):
            stop.set()  # the reducer is asked to stop while the combiner works
            return super().run_round(combiner, plan, timeout_s)

    final = SyncSession(state, models, StoppingGateway(models, {"a": (1.0, 10.0)}), planner, merger, clock, stop).run(
        session
    )
    assert final.rounds_done == 0 and final.status == session.status
    assert [r.status for r in state.list_rounds(session.id)] == [RoundStatus.RUNNING]


class _HeldAsyncGateway(AsyncGateway):
    """Combiner calls are held until released; announcements are recorded as usual."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.release, self.calls = threading.Event(), 0

    def run_round(self, combiner, plan, timeout_s):
        self.calls += 1
        self.release.wait(10)
        return super().run_round(combiner, plan, timeout_s)


def test_an_async_session_with_no_flush_for_timeout_plus_grace_fails_when_the_clock_says_so(stores):
    state, models = stores
    clock = ManualClock()
    registry = CombinerRegistry(state, combiner_timeout_s=1000.0, clock=clock)  # a stays live throughout
    registry.register("a", "a", "a:1")
    registry.heartbeat("a", ["a-c1", "a-c2"])
    seed = save_model(models, {"w": np.zeros(4, np.float32)})
    state.put_model(seed)
    session = Session(
        rounds=2, round_timeout_s=20.0, seed_model_id=seed.id, model_id=seed.id, mode=SessionMode.ASYNC, buffer_size=2
    )
    state.put_session(session)
    planner, merger, stop = _shared(stores, registry, clock, rpc_grace_s=5.0)
    gateway = _HeldAsyncGateway(models, {"a": None})
    runner = AsyncSession(state, models, gateway, planner, merger, clock, stop, wake=threading.Event())
    out = []
    thread = threading.Thread(target=lambda: out.append(runner.run(session)), daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if gateway.calls:
                break
            threading.Event().wait(0.01)
        clock.advance(24.9)
        thread.join(0.1)
        assert thread.is_alive(), "not before round_timeout_s + rpc_grace_s"
        clock.advance(0.1)
        thread.join(5)
    finally:
        gateway.release.set()
    assert not thread.is_alive()
    assert out[0].status == SessionStatus.FAILED and out[0].error == (
        "no combiner sent a partial for 25s (round_timeout_s)"
    )
    assert [a.final for _, a in gateway.announcements] == [True]  # its combiners are told it ended


def test_an_async_combiner_that_failed_is_called_again_only_after_its_back_off_on_the_clock(stores):
    clock = ManualClock()
    controller, gateway, session = _async_setup(
        stores, {"a": InvalidArgument("combiner a: INVALID_ARGUMENT: refused")}, timeout_s=100.0, clock=clock
    )  # it answered (an unreachable one is left out until its next heartbeat: test_reducer_faults)
    thread, out = _run_in_thread(controller, session)
    try:
        for _ in range(500):
            if gateway.plans:
                break
            threading.Event().wait(0.01)
        thread.join(0.2)
        assert len(gateway.plans) == 1, "no retry while the clock stands still"
        clock.advance(1.0)  # the first back-off: 0.5 * 2**1 s
        for _ in range(500):
            if len(gateway.plans) == 2:
                break
            threading.Event().wait(0.01)
        assert len(gateway.plans) == 2
    finally:
        controller.stop()  # sets the stop signal run_session watches
        thread.join(5)
    assert not thread.is_alive() and out[0].status == SessionStatus.RUNNING  # stopped, not failed


def test_failing_marks_the_round_and_every_other_open_round_then_the_session(stores):
    state, models = stores
    clock = ManualClock(10.0)
    _, _, session, _, _ = _sync_setup(stores, {"a": (1.0, 10.0)}, clock=clock)
    merger = Merger(state, models, clock)
    stale = Round(session_id=session.id, index=1, model_in=session.model_id, status=RoundStatus.RUNNING)
    current = Round(session_id=session.id, index=2, model_in=session.model_id, status=RoundStatus.RUNNING)
    done = Round(session_id=session.id, index=3, model_in=session.model_id, status=RoundStatus.DONE)
    for r in (stale, current, done):
        state.put_round(r)
    clock.advance(3.0)
    failed = merger.fail(session, "boom", round_=current, started=8.0)
    assert failed.status == SessionStatus.FAILED and failed.error == "round 2 failed: boom"
    assert state.get_session(session.id).error == "round 2 failed: boom"
    rounds = {r.id: r for r in state.list_rounds(session.id)}
    assert rounds[current.id].status == RoundStatus.FAILED and rounds[current.id].duration_s == 5.0
    assert rounds[stale.id].status == RoundStatus.FAILED and rounds[stale.id].reason == "boom"
    assert rounds[done.id].status == RoundStatus.DONE


# -- the gateway keeps the status a combiner gave --------------------------------


class _RpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class _FakeStub:
    def __init__(self, error: grpc.RpcError) -> None:
        self._error = error

    def RunRound(self, request, timeout):
        raise self._error

    def AnnounceModel(self, request, timeout):
        raise self._error


class _StubbedGateway(GrpcCombinerGateway):
    def __init__(self, error: grpc.RpcError) -> None:
        super().__init__()
        self._fake = _FakeStub(error)

    def _stub(self, combiner):
        return self._fake


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded),
        (grpc.StatusCode.UNAVAILABLE, Unavailable),
        (grpc.StatusCode.NOT_FOUND, NotFound),
        (grpc.StatusCode.INTERNAL, FednError),
    ],
)
def test_the_gateway_raises_the_error_of_the_status_the_combiner_gave(code, expected):
    combiner = CombinerRecord(id="c1", name="c1", address="c1:1")
    gateway = _StubbedGateway(_RpcError(code, "plan refused"))
    plan = RoundPlan(round_id="r", session_id="s", round_index=1, model_id="m")
    with pytest.raises(FednError) as raised:
        gateway.run_round(combiner, plan, 1.0)
    assert type(raised.value) is expected
    assert raised.value.message == f"combiner c1 at c1:1: {code.name}: plan refused"
    with pytest.raises(expected):
        gateway.announce(combiner, Announcement("s", "m", 1, False), 1.0)


def test_a_deadline_is_still_an_unavailable_peer_for_callers_that_catch_that():
    gateway = _StubbedGateway(_RpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "late"))
    with pytest.raises(Unavailable):
        gateway.run_round(
            CombinerRecord(id="c", name="c", address="c:1"),
            RoundPlan(round_id="r", session_id="s", round_index=1, model_id="m"),
            1.0,
        )


def test_async_plans_name_the_version_they_start_from(stores):
    _, models = stores
    clock = ManualClock()
    controller, gateway, session = _async_setup(stores, {"a": 1.0}, rounds=3, clock=clock)
    final = controller.run_session(session)
    assert final.status == SessionStatus.DONE
    plans = [p for _, p in gateway.plans]
    assert [p.model_version for p in plans] == [p.round_index - 1 for p in plans] and len(plans) == 3
    assert len({p.round_id for p in plans}) == 3  # every flush has its own id, and so its own partial key
    np.testing.assert_allclose(decode_model(models.get(model_key(final.model_id)))["w"], np.full(4, 3.0))


def test_the_controller_runs_each_mode_with_its_own_session_class(stores):
    controller, _, session, _, _ = _sync_setup(stores, {"a": (1.0, 10.0)})
    assert isinstance(controller.session_runner(session), SyncSession)
    assert isinstance(controller.session_runner(session.model_copy(update={"mode": SessionMode.ASYNC})), AsyncSession)
