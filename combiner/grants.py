"""Grants: which clients may use a bounded resource of the combiner now, in arrival order.

Two resources are granted this way, so memory does not grow with the number of waiting clients:

- **Uploads.** A combiner stages only a few updates at once (bounded in count and bytes). A client
  that uploads while every slot is taken would hold an open stream whose data sits in gRPC's
  buffers. Instead it asks first (``RequestUpload``); if no slot is free it is queued and told
  later, down its task stream, that its turn has come. Clients that upload without asking still
  work: they wait for a slot inside their stream.
- **Downloads.** Every download call in flight costs about 20 KiB of gRPC state, even while it only
  waits for a free download stream, so a round does not send all its clients their train task at
  once: the task itself is the grant, and the next client gets its task as a download completes.

A waiting client costs a queue entry, not a call. A grant that is not used within
``grant_timeout_s`` passes to the next client; expiry runs on the injected clock's timers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable

from fedn.clock import Clock, TimerHandle

__all__ = ["GrantGate"]


class GrantGate:
    """``capacity`` slots, granted in arrival order; ``notify(client_id)`` delivers a queued grant."""

    def __init__(
        self,
        capacity: int,
        notify: Callable[[str], None],
        *,
        clock: Clock,
        grant_timeout_s: float = 30.0,
    ) -> None:
        self.capacity = max(1, capacity)
        self._notify = notify
        self._grant_timeout_s = grant_timeout_s
        self._clock = clock
        self._holders: dict[str, float | None] = {}  # client -> grant expiry; None while it uploads
        self._queue: OrderedDict[str, asyncio.Future | None] = OrderedDict()  # None: tell it by notify
        self._timer: TimerHandle | None = None  # the next expiry check, armed while grants are unused

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def request(self, client_id: str) -> bool:
        """True if ``client_id`` may upload now; otherwise it is queued and notified when it may."""
        self._expire()
        if client_id in self._holders:
            return True
        if self._free() and not self._queue:
            self._grant(client_id)
            return True
        self._queue.setdefault(client_id, None)
        return False

    def ask(self, client_id: str) -> tuple[bool, int]:
        """``request``, with how many clients were queued before the asker (what RequestUpload answers)."""
        queued = self.waiting
        return self.request(client_id), queued

    @contextlib.asynccontextmanager
    async def slot(self, client_id: str) -> AsyncIterator[None]:
        """Hold a slot while an update streams and folds (waiting for one if the client has no grant)."""
        self._expire()
        if client_id in self._holders or (self._free() and not self._queue):
            self._holders[client_id] = None
        else:
            future = asyncio.get_running_loop().create_future()
            self._queue.pop(client_id, None)
            self._queue[client_id] = future
            try:
                await future
            except asyncio.CancelledError:
                if self._queue.get(client_id) is future:
                    del self._queue[client_id]
                elif client_id in self._holders:
                    self.release(client_id)
                raise
        try:
            yield
        finally:
            self.release(client_id)

    def release(self, client_id: str) -> None:
        """``client_id`` is done (or gone): its slot, or its place in the queue, goes to the next client."""
        self._holders.pop(client_id, None)
        waiter = self._queue.pop(client_id, None)
        if waiter is not None:
            waiter.cancel()
        self._advance()

    def close(self) -> None:
        for waiter in self._queue.values():
            if waiter is not None:
                waiter.cancel()
        self._queue.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- inside ------------------------------------------------------------------

    def _free(self) -> bool:
        return len(self._holders) < self.capacity

    def _grant(self, client_id: str) -> None:
        self._holders[client_id] = self._clock.now() + self._grant_timeout_s
        if self._timer is None:
            self._timer = self._clock.call_later(self._grant_timeout_s + 0.1, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._expire()
        if self._timer is None and any(expiry is not None for expiry in self._holders.values()):
            self._timer = self._clock.call_later(1.0, self._tick)

    def _expire(self) -> None:
        now = self._clock.now()
        stale = [c for c, expiry in self._holders.items() if expiry is not None and expiry < now]
        for client_id in stale:
            del self._holders[client_id]
        if stale:
            self._advance()

    def _advance(self) -> None:
        while self._free() and self._queue:
            client_id, waiter = self._queue.popitem(last=False)
            if waiter is None:
                self._grant(client_id)
                self._notify(client_id)
            elif not waiter.done():
                self._holders[client_id] = None
                waiter.set_result(None)
