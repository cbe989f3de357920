"""Time as a dependency: one clock for reading time, arming timers and waiting with a deadline.

Deadlines, grant expiry, heartbeats and leases read the clock they are given, so a test moves
time with :class:`ManualClock` instead of sleeping. Two worlds use it:

- asyncio code (the combiner): :meth:`Clock.call_later`, :meth:`Clock.sleep`, :meth:`Clock.wait_for`;
- threads (the reducer): :meth:`Clock.wait`, which waits on a :class:`threading.Event` or the deadline.

:class:`SystemClock` is ``time.monotonic`` with the event loop's timers. :class:`ManualClock` only
moves when :meth:`ManualClock.advance` is called, and fires the timers that come due, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

__all__ = ["Clock", "ManualClock", "SystemClock", "TimerHandle"]

T = TypeVar("T")


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """What code that measures or waits on time is given."""

    def now(self) -> float:
        """Seconds on a monotonic scale (only differences mean anything)."""
        ...

    def call_later(self, delay_s: float, callback: Callable[[], object]) -> TimerHandle:
        """Run ``callback`` once, ``delay_s`` from now, on the running event loop."""
        ...

    async def sleep(self, delay_s: float) -> None: ...

    async def wait_for(self, awaitable: Awaitable[T], timeout_s: float) -> T:
        """``awaitable``'s result, or TimeoutError once ``timeout_s`` passed (the awaitable is cancelled)."""
        ...

    def wait(self, event: threading.Event, timeout_s: float) -> bool:
        """Block the calling thread until ``event`` is set (True) or ``timeout_s`` passed (False)."""
        ...


class SystemClock:
    """The real clock: ``time.monotonic`` and the event loop's timers."""

    def now(self) -> float:
        return time.monotonic()

    def call_later(self, delay_s: float, callback: Callable[[], object]) -> TimerHandle:
        return asyncio.get_running_loop().call_later(max(0.0, delay_s), callback)

    async def sleep(self, delay_s: float) -> None:
        await asyncio.sleep(max(0.0, delay_s))

    async def wait_for(self, awaitable: Awaitable[T], timeout_s: float) -> T:
        return await asyncio.wait_for(awaitable, timeout=max(0.0, timeout_s))

    def wait(self, event: threading.Event, timeout_s: float) -> bool:
        return event.wait(max(0.0, timeout_s))


class _ManualTimer:
    def __init__(self, clock: ManualClock, due: float, callback: Callable[[], object]) -> None:
        self.due = due
        self.callback = callback
        self.cancelled = False
        self._clock = clock

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A clock that stands still until :meth:`advance`; for tests and deterministic simulation.

    Timers armed with :meth:`call_later` (and the waits built on them) fire inside :meth:`advance`,
    on the thread that calls it, in due order; asyncio code should call it from the event loop's
    thread and then yield (``await asyncio.sleep(0)``) so woken tasks run. Thread waits
    (:meth:`wait`) return as soon as their event is set or ``advance`` passes their deadline.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._timers: list[tuple[float, int, _ManualTimer]] = []
        self._seq = itertools.count()
        self._changed = threading.Condition()

    def now(self) -> float:
        return self._now

    def call_later(self, delay_s: float, callback: Callable[[], object]) -> TimerHandle:
        timer = _ManualTimer(self, self._now + max(0.0, delay_s), callback)
        with self._changed:
            heapq.heappush(self._timers, (timer.due, next(self._seq), timer))
        return timer

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, firing every timer that comes due on the way."""
        target = self._now + max(0.0, seconds)
        while True:
            with self._changed:
                if not self._timers or self._timers[0][0] > target:
                    break
                due, _, timer = heapq.heappop(self._timers)
                self._now = max(self._now, due)
            if not timer.cancelled:
                timer.callback()
        with self._changed:
            self._now = target
            self._changed.notify_all()

    @property
    def pending_timers(self) -> int:
        """Timers armed and not yet fired or cancelled."""
        return sum(1 for _, _, t in self._timers if not t.cancelled)

    async def sleep(self, delay_s: float) -> None:
        future = asyncio.get_running_loop().create_future()
        handle = self.call_later(delay_s, lambda: future.done() or future.set_result(None))
        try:
            await future
        finally:
            handle.cancel()

    async def wait_for(self, awaitable: Awaitable[T], timeout_s: float) -> T:
        task = asyncio.ensure_future(awaitable)
        expired = asyncio.get_running_loop().create_future()
        handle = self.call_later(timeout_s, lambda: expired.done() or expired.set_result(None))
        try:
            await asyncio.wait({task, expired}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            handle.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise TimeoutError

    def wait(self, event: threading.Event, timeout_s: float) -> bool:
        deadline = self._now + max(0.0, timeout_s)
        with self._changed:
            while not event.is_set() and self._now < deadline:
                # the event is set by another thread without our condition: look again every few ms
                self._changed.wait(0.005)
        return event.is_set()
