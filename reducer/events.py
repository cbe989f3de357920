"""The dashboard's live event source: one watcher of the state store for every viewer.

A thread reads sessions, rounds, models and the federation from the state store about once a second
while at least one viewer is subscribed, and publishes what changed. It never calls into the
controller, so a round runs the same with or without viewers. Each viewer holds a
:class:`Subscription` (a bounded queue of encoded server-sent events); one that stops reading is
dropped when its queue is full, never buffered without bound. :class:`EventStream` is a viewer's answer
body, read on the HTTP server's event loop (``reducer.http_wsgi.ASYNC_BODY``), so open streams hold no
worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections import deque
from collections.abc import Callable

from fedn.errors import FednError, Unavailable
from fedn.records import Round, SessionStatus
from fedn.rest_records import record_to_rest
from fedn.store.base import PageKey, StateStore

__all__ = ["EventHub", "EventStream", "Subscription", "encode_event"]

logger = logging.getLogger(__name__)

KEEPALIVE = b": keep-alive\n\n"
_LIVE = (SessionStatus.PENDING, SessionStatus.RUNNING)


def encode_event(kind: str, data: object) -> bytes:
    """One server-sent event; ``data`` is JSON on a single line, so no field can break the framing."""
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class Subscription:
    """One viewer's pending events, at most ``max_pending``; past that the viewer is dropped."""

    def __init__(self, hub: EventHub, max_pending: int) -> None:
        self._hub = hub
        self._max_pending = max_pending
        self._pending: deque[bytes] = deque()
        self._lock = threading.Lock()
        self._wake: Callable[[], None] | None = None
        self.closed = False
        self.dropped = False

    def push(self, event: bytes) -> None:
        with self._lock:
            if self.closed:
                return
            if len(self._pending) >= self._max_pending:
                self.dropped = True  # it stopped reading: end its stream, its browser reconnects and reloads
                self._pending.clear()
            else:
                self._pending.append(event)
            wake = self._wake
        if self.dropped:
            self.close()
        elif wake is not None:
            wake()

    def take(self) -> list[bytes]:
        """Every pending event, oldest first; empty when none is."""
        with self._lock:
            events = list(self._pending)
            self._pending.clear()
            return events

    def has_pending(self) -> bool:
        with self._lock:
            return bool(self._pending)

    def on_event(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` (from the watcher's thread) after each event and when the subscription closes."""
        with self._lock:
            self._wake = wake

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            wake = self._wake
        self._hub.unsubscribe(self)
        if wake is not None:
            wake()


class EventHub:
    """Publishes the federation's changes to its subscribers; ``start()`` runs the watcher, ``stop()`` ends it.

    ``window`` sessions (newest first) are watched; the rounds of those that are pending or running,
    or changed since the last read, are read each time, from the newest round already seen on: a session
    runs its rounds in order, so an older one no longer changes, and a poll costs the same in round 1000
    as in round 1.
    """

    def __init__(
        self,
        state: StateStore,
        *,
        interval_s: float = 1.0,
        max_subscribers: int = 200,
        max_pending: int = 256,
        window: int = 20,
    ) -> None:
        self.state = state
        self.interval_s = interval_s
        self.max_subscribers = max_subscribers
        self.max_pending = max_pending
        self.window = window
        self._subs: set[Subscription] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen: dict[tuple[str, str], str] = {}  # (kind, id) -> what it looked like when last published
        self._rounds: dict[str, _SeenRounds] = {}  # session id -> its newest rounds as last published

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subs)

    def subscribe(self) -> Subscription:
        """A new viewer; raises :class:`Unavailable` (503) at ``max_subscribers``."""
        sub = Subscription(self, self.max_pending)
        with self._lock:
            if len(self._subs) >= self.max_subscribers:
                raise Unavailable(f"the reducer serves its limit of {self.max_subscribers} event streams; retry later")
            self._subs.add(sub)
        sub.push(encode_event("hello", {"interval_s": self.interval_s}))  # the viewer now loads its snapshot
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subs.discard(sub)

    def publish(self, kind: str, data: object) -> None:
        event = encode_event(kind, data)
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            sub.push(event)

    def poll_once(self) -> int:
        """Read the store once and publish what changed since the last read; returns how many events."""
        published = 0
        sessions = self.state.list_sessions(limit=self.window)
        for session in sessions:
            changed = self._changed("session", session.id, session.model_dump_json())
            if changed:
                self.publish("session", record_to_rest(session))
                published += 1
            if changed or session.status in _LIVE:
                seen = self._rounds.setdefault(session.id, _SeenRounds())
                for round_ in seen.changed(self.state.list_rounds(session.id, after=seen.after())):
                    self.publish("round", record_to_rest(_without_client_figures(round_)))
                    published += 1
        watched = {s.id for s in sessions}
        for gone in [sid for sid in self._rounds if sid not in watched]:  # out of the window: forget it
            del self._rounds[gone]
            self._seen.pop(("session", gone), None)
        newest = self.state.list_models(limit=1)
        if newest and self._changed("models", "newest", newest[0].id):
            self.publish("models", record_to_rest(newest[0]))
            published += 1
        combiners = [(c.id, c.status, c.num_clients) for c in self.state.list_combiners()]
        clients = [(c.id, c.status, c.combiner_id) for c in self.state.list_clients(limit=1000)]
        if self._changed("federation", "", repr((sorted(combiners), sorted(clients)))):
            self.publish("federation", {"combiners": len(combiners), "clients": len(clients)})
            published += 1
        return published

    def _changed(self, kind: str, id_: str, look: str) -> bool:
        if self._seen.get((kind, id_)) == look:
            return False
        self._seen[(kind, id_)] = look
        return True

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="fedn-events", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the watcher and every subscription (their streams end)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            sub.close()

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            if not self.subscribers:
                continue  # no viewer: the store is not read at all
            try:
                self.poll_once()
            except FednError as exc:
                logger.warning("dashboard events: cannot read the state store: %s", exc.message)
            except Exception:
                logger.exception("dashboard events: watcher pass failed")


class _SeenRounds:
    """A session's rounds from its newest index on, as last published. Older rounds are done with (a
    retry of a round has the same index), so they are neither read again nor remembered."""

    def __init__(self) -> None:
        self.newest = -1
        self._looks: dict[str, tuple[int, str]] = {}  # round id -> (index, its JSON when last published)

    def after(self) -> PageKey | None:
        """Rounds of index >= the newest seen (ids sort after the empty string)."""
        return None if self.newest < 0 else PageKey(self.newest, "")

    def changed(self, rounds: list[Round]) -> list[Round]:
        """Those of ``rounds`` that differ from what was published, remembering them."""
        out = []
        for round_ in rounds:
            look = round_.model_dump_json()
            if self._looks.get(round_.id, (0, ""))[1] != look:
                self._looks[round_.id] = (round_.index, look)
                out.append(round_)
            self.newest = max(self.newest, round_.index)
        self._looks = {rid: seen for rid, seen in self._looks.items() if seen[0] >= self.newest}
        return out


class EventStream:
    """A viewer's answer body, iterated on the HTTP server's event loop: its events as they come, a
    keep-alive comment after ``keepalive_s`` of silence (so proxies and browsers keep the stream open)."""

    def __init__(self, sub: Subscription, keepalive_s: float = 15.0) -> None:
        self._sub = sub
        self._keepalive_s = keepalive_s
        self._ready: asyncio.Event | None = None

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> bytes:
        if self._ready is None:
            loop, ready = asyncio.get_running_loop(), asyncio.Event()
            self._ready = ready
            self._sub.on_event(lambda: _wake(loop, ready))
        while True:
            events = self._sub.take()
            if events:
                return b"".join(events)
            if self._sub.closed:
                raise StopAsyncIteration
            self._ready.clear()
            if self._sub.has_pending() or self._sub.closed:
                continue
            try:
                async with asyncio.timeout(self._keepalive_s):
                    await self._ready.wait()
            except TimeoutError:
                return KEEPALIVE

    async def aclose(self) -> None:
        self._sub.close()


def _wake(loop: asyncio.AbstractEventLoop, ready: asyncio.Event) -> None:
    with contextlib.suppress(RuntimeError):  # the loop closed: the server is stopping
        loop.call_soon_threadsafe(ready.set)


def _without_client_figures(round_: Round) -> Round:
    """Each client's own evaluation is for admins (REST shows it to them); the stream is every viewer's."""
    if round_.evaluation is None or not round_.evaluation.per_client:
        return round_
    return round_.model_copy(update={"evaluation": round_.evaluation.model_copy(update={"per_client": []})})
