"""A stop and the controller's own session writes cannot undo each other (reducer.session_writes)."""

from __future__ import annotations

import threading

from fedn.records import Session, SessionStatus
from reducer.session_writes import StopMarkedState


def _running(state) -> Session:
    session = Session(
        rounds=10, min_clients=1, round_timeout_s=5.0, seed_model_id="m0", model_id="m0", status=SessionStatus.RUNNING
    )
    state.put_session(session)
    return session


def test_a_write_from_before_the_stop_keeps_the_stop(stores):
    state, _ = stores
    requests: dict[str, str] = {}
    sessions = StopMarkedState(state, requests)
    read_by_runner = _running(state)
    requests[read_by_runner.id] = "admin"  # the controller records the request, then marks it
    sessions.mark_stop(read_by_runner.id, "admin")
    sessions.put_session(read_by_runner.model_copy(update={"rounds_done": 3, "model_id": "m3"}))  # its own copy
    stored = state.get_session(read_by_runner.id)
    assert (stored.rounds_done, stored.model_id, stored.stop_requested_by) == (3, "m3", "admin")


def test_a_stop_after_a_write_keeps_the_write(stores):
    state, _ = stores
    sessions = StopMarkedState(state, {})
    session = _running(state)
    sessions.put_session(session.model_copy(update={"rounds_done": 3, "model_id": "m3"}))
    marked = sessions.mark_stop(session.id, "admin")
    assert (marked.rounds_done, marked.model_id, marked.stop_requested_by) == (3, "m3", "admin")
    assert state.get_session(session.id) == marked


def test_a_session_that_ended_before_the_stop_landed_is_left_as_it_ended(stores):
    state, _ = stores
    sessions = StopMarkedState(state, {})
    session = _running(state)
    done = session.model_copy(update={"status": SessionStatus.DONE, "rounds_done": 10})
    sessions.put_session(done)
    assert sessions.mark_stop(session.id, "admin") == done
    assert state.get_session(session.id) == done  # not written back as running


def test_other_calls_reach_the_store(stores):
    state, _ = stores
    sessions = StopMarkedState(state, {})
    session = _running(state)
    assert sessions.get_session(session.id) == session and sessions.count_sessions() == 1


def test_a_stop_racing_the_runners_writes_loses_neither(stores, tmp_path):
    from fedn.store.sqlite import SQLiteStateStore

    state = SQLiteStateStore(str(tmp_path / "state.db"))  # shared by two threads
    requests: dict[str, str] = {}
    sessions = StopMarkedState(state, requests)
    session = _running(state)
    start = threading.Barrier(2)

    def runner() -> None:
        start.wait()
        current = session
        for done in range(1, 200):
            current = current.model_copy(update={"rounds_done": done, "model_id": f"m{done}"})
            sessions.put_session(current)

    thread = threading.Thread(target=runner)
    thread.start()
    start.wait()
    requests[session.id] = "admin"
    sessions.mark_stop(session.id, "admin")
    thread.join(30)
    stored = state.get_session(session.id)
    assert (stored.rounds_done, stored.model_id, stored.stop_requested_by) == (199, "m199", "admin")
