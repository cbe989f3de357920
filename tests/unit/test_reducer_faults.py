"""Faults the reducer must ride out: a combiner that stops answering, errors that repeat, writes that
failed yet landed. A manual clock and fake gateways; no network."""

from __future__ import annotations

import logging
import threading

import pydantic
import pytest

from fedn.clock import ManualClock
from fedn.errors import DeadlineExceeded, InvalidArgument, StoreError, Unavailable
from fedn.records import CombinerRecord, RoundPlan, RoundStatus, Session, SessionStatus
from fedn.wire import Announcement
from reducer.controller import Controller
from reducer.gateway import WatchedGateway
from reducer.registry import CombinerRegistry
from tests.unit.test_reducer_controller import FakeGateway, _setup

# -- E: a combiner whose call fails is left out at once ------------------------------------


def test_a_combiner_whose_call_fails_gets_no_more_rounds_or_clients_until_it_heartbeats(stores):
    state, _ = stores
    clock = ManualClock(1000.0)
    controller, gateway, session, registry, _ = _setup(
        stores, {"a": (1.0, 10.0), "b": Unavailable("combiner b: UNAVAILABLE: connection refused")}, clock=clock
    )
    registry.heartbeat("a", ["a-c1", "a-c2", "a-c3"])  # least loaded is b, while it is alive
    final = controller.run_session(session)
    assert final.status == SessionStatus.DONE
    assert [(c, p.round_index) for c, p in gateway.plans if c == "b"] == [("b", 1)], "b gets no second round"
    assert [c.id for c in registry.live()] == ["a"] and clock.now() == 1000.0  # no heartbeat timeout needed
    assert registry.assign("new")["combiner_id"] == "a"
    round_1 = state.list_rounds(session.id)[0]
    failed = sorted((f.client_id, f.error) for f in round_1.failures if f.combiner_id == "b" and f.client_id)
    assert [c for c, _ in failed] == ["b-c1", "b-c2"]
    assert [f.error for f in round_1.failures if f.combiner_id == "b" and not f.client_id] == [
        "combiner b: UNAVAILABLE: connection refused"
    ]
    assert all(e.startswith("combiner failed: combiner b: UNAVAILABLE") for _, e in failed)
    registry.heartbeat("b", ["b-c1", "b-c2"])  # it is back: it gets clients again
    assert registry.assign("newer")["combiner_id"] == "b"


class _Inner:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def run_round(self, combiner, plan, timeout_s):
        raise self.error

    def announce(self, combiner, info, timeout_s):
        raise self.error

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("error", "offline"),
    [(Unavailable("down"), True), (DeadlineExceeded("late"), True), (InvalidArgument("plan refused"), False)],
)
def test_the_watched_gateway_marks_a_combiner_unreachable_only_when_it_did_not_answer(stores, error, offline):
    state, _ = stores
    registry = CombinerRegistry(state, combiner_timeout_s=10.0, clock=ManualClock())
    registry.register("a", "a", "a:1")
    registry.heartbeat("a", ["c1"])
    gateway = WatchedGateway(_Inner(error), registry)
    combiner = CombinerRecord(id="a", name="a", address="a:1")
    with pytest.raises(type(error)):
        gateway.announce(combiner, Announcement("s", "m", 1, False), 1.0)
    assert (registry.live() == []) is offline
    registry.heartbeat("a", ["c1"])
    with pytest.raises(type(error)):
        gateway.run_round(combiner, RoundPlan(round_id="r", session_id="s", round_index=1, model_id="m"), 1.0)
    assert (registry.live() == []) is offline


# -- G: the controller backs off on every repeated error ------------------------------------


class _UnreadableSessions:
    """A state store whose sessions fail validation when read, as a stored NaN made them."""

    def __init__(self, inner) -> None:
        self._inner, self.calls = inner, 0

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def list_sessions(self, **kwargs):
        self.calls += 1
        Session.model_validate({"rounds": 1, "config": {"lr": None}, "seed_model_id": "m", "model_id": "m"})


def _wait_for(predicate, timeout_s: float = 5.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout_s / 0.01)):
        if predicate():
            return
        done.wait(0.01)
    raise AssertionError("condition not reached")


def test_an_error_reading_sessions_backs_off_on_the_clock_with_one_line_each(stores, caplog):
    state, models = stores
    clock = ManualClock()
    _, gateway, _, registry, _ = _setup(stores, {"a": (1.0, 10.0)}, clock=clock)
    bad = _UnreadableSessions(state)
    with pytest.raises(pydantic.ValidationError):
        bad.list_sessions()
    bad.calls = 0
    controller = Controller(bad, models, registry, gateway, clock=clock, backoff_s=1.0, max_backoff_s=4.0)
    caplog.set_level(logging.INFO, logger="reducer.controller")
    controller.start()
    try:
        threading.Event().wait(0.3)
        assert bad.calls == 1, "no second read before the back-off passed on the clock"
        clock.advance(1.0)
        _wait_for(lambda: bad.calls == 2)
        clock.advance(1.9)
        threading.Event().wait(0.1)
        assert bad.calls == 2, "the second back-off is twice the first"
        clock.advance(0.1)
        _wait_for(lambda: bad.calls == 3)
    finally:
        controller.stop()
    lines = [r for r in caplog.records if r.name == "reducer.controller" and "retrying in" in r.getMessage()]
    assert [r.getMessage().rsplit(" ", 1)[-1] for r in lines] == ["1.0s", "2.0s", "4.0s"]
    assert all(r.exc_info is None for r in lines), "one line per back-off, no traceback"


class _BuggyGateway(FakeGateway):
    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.calls = 0

    def run_round(self, combiner, plan, timeout_s):
        self.calls += 1
        raise RuntimeError("a bug")


def test_an_unexpected_error_is_retried_after_a_back_off_then_fails_the_session_with_the_reason(stores):
    state, _ = stores
    clock = ManualClock()
    _, gateway, session, registry, _ = _setup(stores, {"a": (1.0, 10.0)}, clock=clock, gateway_class=_BuggyGateway)
    controller = Controller(
        state, stores[1], registry, gateway, clock=clock, backoff_s=1.0, max_backoff_s=4.0, max_session_errors=3
    )
    controller.start()
    try:
        _wait_for(lambda: gateway.calls == 1)
        threading.Event().wait(0.2)
        assert gateway.calls == 1 and state.get_session(session.id).status == SessionStatus.RUNNING
        for _ in range(20):
            clock.advance(1.0)
            threading.Event().wait(0.02)
        _wait_for(lambda: state.get_session(session.id).status == SessionStatus.FAILED)
    finally:
        controller.stop()
    assert gateway.calls == 3
    failed = state.get_session(session.id)
    assert failed.error == "RuntimeError: a bug (3 times in a row)"
    [round_] = state.list_rounds(session.id)
    assert round_.status == RoundStatus.FAILED and round_.reason == failed.error


class _LandedButFailed:
    """The round-done write reaches the store, yet the call reports an error (a lost acknowledgement)."""

    def __init__(self, inner) -> None:
        self._inner, self.raised = inner, 0

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def put_round(self, round_):
        self._inner.put_round(round_)
        if round_.status == RoundStatus.DONE and self.raised == 0:
            self.raised += 1
            raise StoreError("connection reset while waiting for the acknowledgement")


def test_after_a_store_error_the_controller_acts_on_the_state_as_stored(stores):
    state, models = stores
    _, gateway, session, registry, _ = _setup(stores, {"a": (1.0, 10.0)}, rounds=2)
    flaky = _LandedButFailed(state)
    controller = Controller(flaky, models, registry, gateway, rpc_grace_s=1.0, backoff_s=0.01)
    controller.start()
    try:
        _wait_for(lambda: state.get_session(session.id).status == SessionStatus.DONE)
    finally:
        controller.stop()
    assert flaky.raised == 1
    assert [p.round_index for _, p in gateway.plans] == [1, 2], "the round that landed is not run again"
    rounds = state.list_rounds(session.id)
    assert [r.index for r in rounds] == [1, 2] and rounds[1].model_in == rounds[0].model_out
    assert len(state.list_models(session_id=session.id)) == 2
