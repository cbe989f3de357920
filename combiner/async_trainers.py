"""Who trains in an async run: every connected client has a task out, at most ``max_clients`` at
once (the rest wait their turn), and a client that failed gets its next task after a back-off."""

from __future__ import annotations

import contextlib
from collections import deque

from combiner.clients import ClientHub
from combiner.model_cache import CachedModel, ModelCache
from fedn.clock import Clock
from fedn.wire import TaskInfo

__all__ = ["AsyncTrainers"]

_MAX_BACKOFF_S = 30.0


class AsyncTrainers:
    """Clients with a task out, clients waiting for a slot, and consecutive failures per client.

    ``task`` is what the next client gets; the run that owns this sets it whenever the version or the
    plan changes. A task goes out when its download is granted (``ModelCache.task_gate``), so it names
    the newest version at that moment.
    """

    def __init__(
        self, clients: ClientHub, models: ModelCache, model: CachedModel, clock: Clock, task: TaskInfo, max_clients: int
    ) -> None:
        self.task = task
        self.max_clients = max_clients  # 0: no cap
        self._clients = clients
        self._clock = clock
        self._training: set[str] = set()
        self._waiting: deque[str] = deque()
        self._strikes: dict[str, int] = {}
        self._closed = False
        self._tasks = models.task_gate(model, self._send)

    def __contains__(self, client_id: str) -> bool:
        return client_id in self._training

    def __len__(self) -> int:
        return len(self._training)

    def dispatch(self, client_id: str) -> None:
        """Give ``client_id`` a task, or queue it if the cap is reached."""
        if self._closed or client_id in self._training or not self._clients.is_connected(client_id):
            return
        cap = self.max_clients
        if cap and len(self._training) >= cap:
            if client_id not in self._waiting:
                self._waiting.append(client_id)
            return
        self._training.add(client_id)
        if self._tasks.request(client_id):
            self._send(client_id)

    def _send(self, client_id: str) -> None:
        if not self._closed and client_id in self._training:
            self._clients.send(client_id, self.task)

    def fill(self) -> None:
        """Hand free slots to waiting clients (after a slot freed or the cap rose)."""
        cap = self.max_clients
        while self._waiting and not self._closed and (not cap or len(self._training) < cap):
            self.dispatch(self._waiting.popleft())

    def release(self, client_id: str, ok: bool) -> None:
        """``client_id`` answered: free its slot, then give it its next task (after a back-off if it failed)."""
        self._training.discard(client_id)
        self._tasks.release(client_id)
        self.fill()
        if ok:
            self._strikes.pop(client_id, None)
            self.dispatch(client_id)
            return
        strikes = self._strikes[client_id] = self._strikes.get(client_id, 0) + 1
        delay = min(_MAX_BACKOFF_S, 0.5 * 2 ** (strikes - 1))
        self._clock.call_later(delay, lambda: self.dispatch(client_id))

    def left(self, client_id: str) -> None:
        """``client_id``'s stream closed: forget it, failures included (client ids come and go; a count
        kept for each that ever failed would grow for as long as the run lasts)."""
        self._strikes.pop(client_id, None)
        self._training.discard(client_id)
        self._tasks.release(client_id)
        with contextlib.suppress(ValueError):
            self._waiting.remove(client_id)
        self.fill()

    def downloaded(self, client_id: str) -> None:
        """Its download is done: the next task may go out."""
        if not self._closed:
            self._tasks.release(client_id)

    def close(self) -> None:
        self._closed = True
        self._training.clear()
        self._waiting.clear()
        self._tasks.close()
