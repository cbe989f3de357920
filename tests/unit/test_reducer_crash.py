"""A reducer killed at every write of a session, then a fresh one on the same stores: nothing lost, nothing twice.

A crash is simulated by store wrappers that let the first ``k`` writes through and raise on the next
(and on every one after, as a dead process writes nothing). A fresh controller on the untouched stores
then resumes. For every ``k`` up to a run with no crash, the stores must hold one model per round
index (sync) or version (async), each round's parent the previous round's model, every done round's
model with its recorded sha256, and no done round may be run again.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
from pathlib import Path

import numpy as np

from fedn.clock import ManualClock
from fedn.codec import decode_model
from fedn.models import model_key, save_model
from fedn.records import NodeStatus, Round, RoundStatus, Session, SessionMode, SessionStatus
from fedn.store import LocalModelStore, SQLiteStateStore
from reducer.controller import Controller
from reducer.registry import CombinerRegistry
from tests.unit.test_reducer_async import AsyncGateway
from tests.unit.test_reducer_controller import FakeGateway, _advance_until_done, _run_in_thread


class _Crash(BaseException):
    """The reducer process died at this write (a BaseException: no handler in the reducer may catch it)."""


class _Writes:
    """Counts writes to both stores; the write after the ``crash_after``-th one, and every later one, raises."""

    def __init__(self, crash_after: int | None) -> None:
        self.crash_after, self.count, self.lock = crash_after, 0, threading.Lock()

    def tick(self, what: str) -> None:
        with self.lock:
            if self.crash_after is not None and self.count >= self.crash_after:
                raise _Crash(what)
            self.count += 1


class _CrashingState:
    def __init__(self, inner: SQLiteStateStore, writes: _Writes) -> None:
        self._inner, self._writes = inner, writes

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if not name.startswith("put_"):
            return attr

        def put(record):
            self._writes.tick(f"{name} {record.id}")
            attr(record)

        return put


class _CrashingModels:
    def __init__(self, inner: LocalModelStore, writes: _Writes) -> None:
        self._inner, self._writes = inner, writes

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def put(self, key, data):
        self._writes.tick(f"put {key}")
        return self._inner.put(key, data)


def _stores(root: Path) -> tuple[SQLiteStateStore, LocalModelStore]:
    """The stores a reducer dies on and the next one resumes from (in memory: only the objects die)."""
    return SQLiteStateStore(":memory:"), LocalModelStore(root / "models")


def _registry(state: SQLiteStateStore, behaviour) -> CombinerRegistry:
    """A new reducer's registry: every combiner of ``behaviour`` heartbeats with two clients."""
    registry = CombinerRegistry(state, combiner_timeout_s=60.0)
    registry.load()
    for cid in behaviour:
        registry.register(cid, cid, f"{cid}:1")
        registry.heartbeat(cid, [f"{cid}-c1", f"{cid}-c2"])
    return registry


def _new_session(state, models, mode: SessionMode) -> Session:
    seed = save_model(models, {"w": np.zeros(4, np.float32)})
    state.put_model(seed)
    session = Session(
        rounds=3,
        min_clients=1,
        round_timeout_s=5.0,
        seed_model_id=seed.id,
        model_id=seed.id,
        strategy="fedavgm",  # its moments are one more write in each round's end
        strategy_config={"eta": 1.0, "momentum": 0.5},
        mode=mode,
        buffer_size=2,
    )
    state.put_session(session)
    return session


_SYNC = {"a": (1.0, 10.0), "b": (4.0, 30.0)}
_ASYNC = {"a": 1.0, "b": 2.0}


def _gateway(mode: SessionMode, models):
    return AsyncGateway(models, _ASYNC) if mode == SessionMode.ASYNC else FakeGateway(models, _SYNC)


def _run_with_crash(state, models, mode: SessionMode, crash_after: int | None) -> tuple[str, bool]:
    """Run a fresh session that crashes after ``crash_after`` writes; returns its id and whether it crashed."""
    session = _new_session(state, models, mode)
    writes = _Writes(crash_after)
    behaviour = _ASYNC if mode == SessionMode.ASYNC else _SYNC
    controller = Controller(
        _CrashingState(state, writes),
        _CrashingModels(models, writes),
        _registry(state, behaviour),
        _gateway(mode, models),
        rpc_grace_s=0.1,
    )
    try:
        controller.run_session(session)
    except _Crash:
        return session.id, True
    return session.id, False


def _resume(state, models, mode: SessionMode, session_id: str):
    """A restarted reducer on the same stores runs what is left; returns its gateway."""
    behaviour = _ASYNC if mode == SessionMode.ASYNC else _SYNC
    gateway = _gateway(mode, models)
    controller = Controller(state, models, _registry(state, behaviour), gateway, rpc_grace_s=0.1)
    controller.run_session(state.get_session(session_id))
    return gateway


def _check_invariants(state, models, session_id: str, done_before: dict[str, str | None], gateway) -> list[str]:
    """What is wrong with the session's records (nothing, if they hold the invariants)."""
    problems = []
    session = state.get_session(session_id)
    if session.status != SessionStatus.DONE or session.rounds_done != session.rounds:
        problems.append(f"session {session.status} after {session.rounds_done} of {session.rounds}")
    done = [r for r in state.list_rounds(session_id) if r.status == RoundStatus.DONE]
    indexes = [r.index for r in done]
    if indexes != list(range(1, session.rounds + 1)):
        problems.append(f"done indexes {indexes}")
    records = state.list_models(session_id=session_id, limit=1000)
    if sorted(m.id for m in records) != sorted(r.model_out for r in done):
        problems.append(f"{len(records)} model records for {len(done)} done rounds")
    parent = session.seed_model_id
    for round_ in sorted(done, key=lambda r: r.index):
        record = state.get_model(round_.model_out)
        if round_.model_in != parent or record.parent_id != parent:
            problems.append(f"round {round_.index}: parent {record.parent_id}, model_in {round_.model_in}")
        if hashlib.sha256(models.get(model_key(record.id))).hexdigest() != record.sha256:
            problems.append(f"round {round_.index}: model blob does not match its sha256")
        parent = round_.model_out
    if session.model_id != parent:
        problems.append("the session's model is not its last round's")
    rerun = {p.round_id for _, p in gateway.plans} & done_before.keys()
    if rerun:
        problems.append(f"done rounds run again: {sorted(rerun)}")
    changed = [rid for rid, out in done_before.items() if state.get_round(rid).model_out != out]
    if changed:
        problems.append(f"done rounds changed their model: {changed}")
    return problems


def _crash_at_every_write(tmp_path: Path, mode: SessionMode) -> None:
    problems: dict[int, list[str]] = {}
    for k in itertools.count():
        state, models = _stores(tmp_path / f"k{k}")
        session_id, crashed = _run_with_crash(state, models, mode, k)
        if not crashed:
            break
        done_before = {r.id: r.model_out for r in state.list_rounds(session_id) if r.status == RoundStatus.DONE}
        gateway = _resume(state, models, mode, session_id)
        if found := _check_invariants(state, models, session_id, done_before, gateway):
            problems[k] = found
        state.close()
    assert k > 15, "the session ran to its end without a crash: the wrappers saw no writes"
    assert not problems, problems


def test_a_sync_session_killed_at_any_write_resumes_to_one_model_per_round(tmp_path):
    _crash_at_every_write(tmp_path, SessionMode.SYNC)


def test_an_async_session_killed_at_any_write_resumes_to_one_model_per_version(tmp_path):
    _crash_at_every_write(tmp_path, SessionMode.ASYNC)


# -- A: a restarted reducer waits for the combiners of the round it resumes ----------------


def _interrupted_round(stores, clock, *, resume_wait_s=30.0):
    """Stores as a reducer left them when it died while round 1 ran on a and b; a new reducer whose
    registry has heard from ``a`` only."""
    state, models = stores
    seed = save_model(models, {"w": np.zeros(4, np.float32)})
    state.put_model(seed)
    session = Session(
        rounds=1, min_clients=2, round_timeout_s=60.0, seed_model_id=seed.id, model_id=seed.id, status="running"
    )
    state.put_session(session)
    round_ = Round(session_id=session.id, index=1, model_in=seed.id, status=RoundStatus.RUNNING, combiners=["a", "b"])
    state.put_round(round_)
    registry = CombinerRegistry(state, combiner_timeout_s=10.0, clock=clock)
    registry.register("a", "a", "a:1")
    registry.heartbeat("a", ["a-c1", "a-c2"])
    gateway = FakeGateway(models, {"a": (1.0, 10.0), "b": (4.0, 30.0)})
    controller = Controller(state, models, registry, gateway, rpc_grace_s=1.0, clock=clock, resume_wait_s=resume_wait_s)
    return controller, gateway, registry, state.get_session(session.id), round_


def test_a_resumed_round_waits_for_its_combiners_and_merges_both_partials(stores):
    state, models = stores
    clock = ManualClock(1000.0)
    controller, gateway, registry, session, round_ = _interrupted_round(stores, clock)
    thread, out = _run_in_thread(controller, session)
    thread.join(0.2)
    assert thread.is_alive(), "the resumed round waits for b, which was in it"
    clock.advance(3.0)
    registry.register("b", "b", "b:1")
    registry.heartbeat("b", ["b-c1", "b-c2"])
    _advance_until_done(clock, thread)
    assert out[0].status == SessionStatus.DONE
    assert sorted((c, p.round_id) for c, p in gateway.plans) == [("a", round_.id), ("b", round_.id)]
    done = state.get_round(round_.id)
    assert done.status == RoundStatus.DONE and done.combiners == ["a", "b"] and done.total_weight == 40.0
    np.testing.assert_allclose(decode_model(models.get(model_key(out[0].model_id)))["w"], np.full(4, 3.25))


def test_a_combiner_that_does_not_come_back_is_waited_for_no_longer_than_resume_wait_s(stores):
    state, _ = stores
    clock = ManualClock(1000.0)
    controller, gateway, registry, session, round_ = _interrupted_round(stores, clock, resume_wait_s=20.0)
    session = session.model_copy(update={"min_clients": 1})
    state.put_session(session)
    thread, out = _run_in_thread(controller, session)
    thread.join(0.2)
    for _ in range(19):  # a heartbeats, b does not
        clock.advance(1.0)
        registry.heartbeat("a", ["a-c1", "a-c2"])
    thread.join(0.05)
    assert thread.is_alive() and gateway.plans == []
    clock.advance(1.0)
    thread.join(5)
    assert not thread.is_alive()
    assert out[0].status == SessionStatus.DONE
    assert [(c, p.round_id) for c, p in gateway.plans] == [("a", round_.id)]
    done = state.get_round(round_.id)
    assert done.combiners == ["a", "b"] and done.total_weight == 10.0
    assert any(f.combiner_id == "b" and "did not come back" in f.error for f in done.failures)
    assert state.get_combiner("a").status == NodeStatus.ONLINE
