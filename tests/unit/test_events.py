"""The dashboard's event source: one watcher, many viewers, and a viewer that stops reading is dropped."""

from __future__ import annotations

import asyncio

import pytest

from fedn.errors import Unavailable
from fedn.records import Round, RoundStatus, Session, SessionStatus
from reducer.events import KEEPALIVE, EventHub, EventStream


def _session(**kw) -> Session:
    return Session(rounds=3, seed_model_id="m0", model_id="m0", **kw)


def test_fifty_viewers_get_each_change_and_a_stalled_one_is_dropped(stores):
    state, _ = stores
    hub = EventHub(state, max_pending=8)
    subs = [hub.subscribe() for _ in range(50)]
    stalled = subs[0]
    for sub in subs:
        assert [e.split(b"\n")[0] for e in sub.take()] == [b"event: hello"]

    session = _session(status=SessionStatus.RUNNING)
    state.put_session(session)
    assert hub.poll_once() >= 1
    assert hub.poll_once() == 0  # nothing changed: nothing published

    for sub in subs[1:]:
        events = sub.take()
        assert any(e.startswith(b"event: session\n") and session.id.encode() in e for e in events)
    for i in range(1, 12):  # the stalled viewer never takes: its queue fills, then it is dropped
        state.put_session(session.model_copy(update={"rounds_done": i % 3, "updated_at": float(i)}))
        hub.poll_once()
        for sub in subs[1:]:
            assert sub.take(), f"a reading viewer missed change {i}"

    assert stalled.dropped and stalled.closed
    assert stalled.take() == []
    assert hub.subscribers == 49
    assert not any(s.dropped for s in subs[1:])


def test_the_limit_of_viewers_is_refused_with_503(stores):
    hub = EventHub(stores[0], max_subscribers=2)
    first, _ = hub.subscribe(), hub.subscribe()
    with pytest.raises(Unavailable) as exc:
        hub.subscribe()
    assert exc.value.http_status == 503
    first.close()
    hub.subscribe()  # a closed stream frees its place


def test_stream_sends_events_then_keepalive_and_ends_when_stopped(stores):
    state, _ = stores
    hub = EventHub(state)

    async def run() -> list[bytes]:
        stream = EventStream(hub.subscribe(), keepalive_s=0.01)
        got = [await anext(stream)]  # hello
        got.append(await anext(stream))  # nothing happened: a keep-alive comment
        state.put_session(_session())
        await asyncio.to_thread(hub.poll_once)  # published from another thread, as the watcher does
        got.append(await anext(stream))
        hub.stop()
        with pytest.raises(StopAsyncIteration):
            await anext(stream)
        return got

    hello, keepalive, change = asyncio.run(run())
    assert hello.startswith(b"event: hello\n")
    assert keepalive == KEEPALIVE
    assert b"event: session\n" in change
    assert hub.subscribers == 0


def test_a_poll_reads_a_running_session_from_its_newest_round_on(stores):
    """A long session costs a poll the same as a short one: ended rounds are neither read nor remembered,
    and every change of the newest round (a retry of the same index too) is still published."""
    state, _ = stores
    hub = EventHub(state)
    sub = hub.subscribe()
    session = _session(status=SessionStatus.RUNNING)
    state.put_session(session)
    read: list[int] = []
    list_rounds = state.list_rounds

    def counting(session_id, **kw):
        rounds = list_rounds(session_id, **kw)
        read.append(len(rounds))
        return rounds

    state.list_rounds = counting
    try:
        for index in range(1, 201):
            state.put_round(Round(session_id=session.id, index=index, model_in="m0", status=RoundStatus.DONE))
            read.clear()
            hub.poll_once()
            assert sum(read) <= 2, f"round {index}: the poll read {sum(read)} rounds"
        sub.take()
        retry = Round(session_id=session.id, index=200, model_in="m0", status=RoundStatus.RUNNING)
        state.put_round(retry)
        hub.poll_once()
        events = sub.take()
        assert any(e.startswith(b"event: round\n") and retry.id.encode() in e for e in events)
        state.put_round(retry.model_copy(update={"status": RoundStatus.DONE}))
        hub.poll_once()
        assert any(retry.id.encode() in e and b'"done"' in e for e in sub.take())
        assert len(hub._rounds[session.id]._looks) <= 2  # the newest index's attempts only
    finally:
        state.list_rounds = list_rounds
