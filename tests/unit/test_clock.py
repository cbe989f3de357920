"""The injectable clock: a ManualClock moves only when told, and fires timers and waits in due order."""

from __future__ import annotations

import asyncio
import threading

import pytest

from fedn.clock import Clock, ManualClock, SystemClock


def test_both_clocks_satisfy_the_protocol():
    for clock in (SystemClock(), ManualClock()):
        assert isinstance(clock.now(), float)
        assert all(callable(getattr(clock, name)) for name in ("call_later", "sleep", "wait_for", "wait"))
    clock: Clock = ManualClock()  # type-checks as the protocol
    assert clock.now() == 0.0


def test_manual_timers_fire_in_due_order_and_only_when_time_passes_them():
    clock = ManualClock(start=100.0)
    fired: list[tuple[str, float]] = []
    clock.call_later(2.0, lambda: fired.append(("b", clock.now())))
    clock.call_later(1.0, lambda: fired.append(("a", clock.now())))
    cancelled = clock.call_later(1.5, lambda: fired.append(("x", clock.now())))
    cancelled.cancel()
    clock.advance(0.5)
    assert fired == []
    clock.advance(5.0)
    assert fired == [("a", 101.0), ("b", 102.0)]
    assert clock.now() == 105.5
    assert clock.pending_timers == 0


def test_a_timer_armed_by_a_timer_fires_in_the_same_advance_when_due():
    clock = ManualClock()
    fired: list[float] = []

    def tick() -> None:
        fired.append(clock.now())
        if len(fired) < 3:
            clock.call_later(1.0, tick)

    clock.call_later(1.0, tick)
    clock.advance(10.0)
    assert fired == [1.0, 2.0, 3.0]


def test_manual_wait_for_times_out_only_when_the_clock_passes_the_deadline():
    async def scenario() -> None:
        clock = ManualClock()
        never = asyncio.Event()
        waiting = asyncio.ensure_future(clock.wait_for(never.wait(), timeout_s=30.0))
        await asyncio.sleep(0)
        clock.advance(29.0)
        await asyncio.sleep(0)
        assert not waiting.done()
        clock.advance(1.0)
        with pytest.raises(TimeoutError):
            await waiting

        done = asyncio.Event()
        result = asyncio.ensure_future(clock.wait_for(done.wait(), timeout_s=30.0))
        await asyncio.sleep(0)
        done.set()
        assert await result is True
        assert clock.pending_timers == 0  # the deadline's timer is gone with the wait

    asyncio.run(scenario(), debug=False)


def test_manual_sleep_wakes_when_advanced():
    async def scenario() -> None:
        clock = ManualClock()
        sleeper = asyncio.ensure_future(clock.sleep(5.0))
        await asyncio.sleep(0)
        clock.advance(4.9)
        await asyncio.sleep(0)
        assert not sleeper.done()
        clock.advance(0.1)
        await asyncio.wait_for(sleeper, 5.0)

    asyncio.run(scenario())


def test_thread_wait_returns_on_the_event_or_when_advanced_past_the_deadline():
    clock = ManualClock()
    event = threading.Event()
    outcome: list[bool] = []
    waiter = threading.Thread(target=lambda: outcome.append(clock.wait(event, 10.0)))
    waiter.start()
    clock.advance(9.0)
    waiter.join(0.05)
    assert waiter.is_alive()  # real time passed, the clock did not
    clock.advance(1.0)
    waiter.join(5.0)
    assert outcome == [False]

    event.set()
    assert clock.wait(event, 10.0) is True
