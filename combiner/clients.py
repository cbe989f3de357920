"""Connected clients: one task stream each, and one heartbeat loop for all of them.

A stream can be *shed* (:meth:`ClientHub.shed`) when the reducer rebalances: it ends with UNAVAILABLE
and a message that tells the client to ask the reducer for a combiner again. Only idle clients are
shed: a client is busy from the moment a run holds it (:meth:`ClientHub.hold`, or a train task sent
to it) for as long as that run is the active one.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from combiner.compressed import negotiate
from fedn.clock import Clock
from fedn.errors import InvalidArgument, ResourceExhausted, Unavailable
from fedn.metrics import CombinerMetrics
from fedn.wire import SHED_MESSAGE, TaskInfo

__all__ = ["SHED_MESSAGE", "ClientConnection", "ClientHub", "TaskQueue"]

logger = logging.getLogger(__name__)

# Heartbeats go out in this many passes per interval, each to the streams that have heard nothing for
# about an interval: spread over time rather than one burst to every stream.
_HEARTBEAT_PASSES = 8
# Clients give up on a combiner after three intervals, but never wait more than 10 minutes
# (client.runtime.MAX_SILENCE_S): heartbeats are never further apart than this, whatever the settings.
MAX_HEARTBEAT_INTERVAL_S = 120.0


@dataclass(frozen=True)
class _Shed:
    reason: str


class TaskQueue(asyncio.Queue):
    """A stream's tasks; once shed, :meth:`get` raises Unavailable, which ends the stream with that status."""

    async def get(self):
        item = await super().get()
        if isinstance(item, _Shed):
            raise Unavailable(item.reason)
        return item


@dataclass(eq=False)
class ClientConnection:
    """One open task stream; the stream handler is the only writer, fed through ``tasks``. ``held_by``
    is the run that gave it work last (a run id, "" for none); ``shed`` once it was told to go. ``codecs``
    are the compression codecs it announced (fedn.compression): its train tasks use no others."""

    client_id: str
    name: str
    codecs: frozenset[str] = frozenset()
    tasks: TaskQueue = field(default_factory=TaskQueue)
    held_by: str = ""
    shed: bool = False
    last_sent: float = 0.0  # on the hub's clock: when a task or heartbeat was last queued for it


class ClientHub:
    """The task streams open now, by client id; a client that connects again replaces its old stream.
    At most ``max_clients`` streams are held (shed ones until they close included): each costs memory
    and a heartbeat, and a sync round selects among them."""

    def __init__(
        self,
        clock: Clock,
        *,
        max_clients: int = 10_000,
        metrics: CombinerMetrics | None = None,
        heartbeat_interval_s: float = 2.0,
        max_heartbeats_per_s: float = 500.0,
    ) -> None:
        if heartbeat_interval_s <= 0 or max_heartbeats_per_s <= 0:
            raise InvalidArgument("heartbeat_interval_s and max_heartbeats_per_s must be positive")
        self._clock = clock
        self._max_clients = max_clients
        self._clients: dict[str, ClientConnection] = {}
        self._heartbeat_interval_s = heartbeat_interval_s
        self._max_heartbeats_per_s = max_heartbeats_per_s
        if metrics is not None:  # read when scraped, on the event loop that changes it
            metrics.clients_connected.set_function(self.__len__)

    def connect(self, client_id: str, name: str, codecs: frozenset[str] = frozenset()) -> tuple[ClientConnection, bool]:
        """The new stream, and whether it replaced an older one of the same client."""
        if not client_id:
            raise InvalidArgument("client_id is required")
        previous = self._clients.get(client_id)
        if previous is None and len(self._clients) >= self._max_clients:
            raise ResourceExhausted(
                f"combiner is full: it serves at most {self._max_clients} clients (--max-clients); "
                "ask the reducer for another combiner later"
            )
        conn = ClientConnection(client_id, name or client_id, codecs, last_sent=self._clock.now())
        self._clients[client_id] = conn
        logger.info(
            "client %s (%s) connected%s; %d connected",
            client_id,
            conn.name,
            " again, replacing its old stream" if previous else "",
            len(self._clients),
        )
        return conn, previous is not None

    def has(self, client_id: str) -> bool:
        return client_id in self._clients

    def disconnect(self, conn: ClientConnection) -> bool:
        """Forget ``conn``; False if a newer stream of the same client had already replaced it."""
        if self._clients.get(conn.client_id) is not conn:
            return False
        del self._clients[conn.client_id]
        logger.info("client %s disconnected; %d connected", conn.client_id, len(self._clients))
        return True

    def send(self, client_id: str, task: TaskInfo) -> TaskInfo | None:
        """Queue ``task`` on the client's stream, its codecs cut to those the client announced, and return
        it as sent; a client that is gone (or shed) misses it (None). A train task makes its run hold it."""
        conn = self._clients.get(client_id)
        if conn is None or conn.shed:
            return None
        task = negotiate(task, conn.codecs)
        if task.kind == "train":
            conn.held_by = task.round_id
        conn.tasks.put_nowait(task)
        conn.last_sent = self._clock.now()
        return task

    def hold(self, run_id: str, client_ids: list[str]) -> None:
        """``run_id`` may give these clients work (e.g. a sync round chose among them): not idle while it runs."""
        for client_id in client_ids:
            if (conn := self._clients.get(client_id)) is not None:
                conn.held_by = run_id

    def idle_client_ids(self, active_run_id: str) -> list[str]:
        """Connected clients that the active run (``""`` for none) does not hold, latest connected first."""
        return [
            c.client_id
            for c in reversed(self._clients.values())
            if not c.shed and (not active_run_id or c.held_by != active_run_id)
        ]

    def shed(self, client_ids: list[str], reason: str = SHED_MESSAGE) -> list[str]:
        """End these clients' streams with UNAVAILABLE and ``reason``; returns those that were connected.
        From now on they are not counted as connected; each is forgotten when its stream closes."""
        shed = []
        for client_id in client_ids:
            conn = self._clients.get(client_id)
            if conn is None or conn.shed:
                continue
            conn.shed = True
            conn.tasks.put_nowait(_Shed(reason))
            shed.append(client_id)
        if shed:
            logger.info("shed %d clients to rebalance: %s", len(shed), ", ".join(shed))
        return shed

    def is_connected(self, client_id: str) -> bool:
        conn = self._clients.get(client_id)
        return conn is not None and not conn.shed

    def connected_client_ids(self) -> list[str]:
        return sorted(c.client_id for c in self._clients.values() if not c.shed)

    def all_announce(self, client_ids: list[str], codec: str) -> bool:
        """Whether every one of these clients that is connected announced ``codec`` (and so uploads in it)."""
        return all(codec in conn.codecs for c in client_ids if (conn := self._clients.get(c)) is not None)

    def __len__(self) -> int:
        return sum(not c.shed for c in self._clients.values())

    def heartbeat_interval_s(self) -> float:
        """Seconds between heartbeats to a stream that gets nothing else: ``heartbeat_interval_s``, or more
        when that would send more than ``max_heartbeats_per_s`` in all. Each heartbeat costs a message
        on both ends; at a fixed interval their cost would grow with the number of clients, and so would
        the time a round takes, so the cost of a round would grow with its square."""
        wanted = max(self._heartbeat_interval_s, len(self._clients) / self._max_heartbeats_per_s)
        return min(wanted, MAX_HEARTBEAT_INTERVAL_S)

    def heartbeat(self) -> TaskInfo:
        """A heartbeat: ``timeout_s`` tells the client the interval, so it knows how long a silence means
        a dead combiner (:class:`client.runtime.ClientRuntime`)."""
        return TaskInfo("heartbeat", timeout_s=self.heartbeat_interval_s())

    async def send_heartbeats(self) -> None:
        """A heartbeat to each stream that got nothing for about an interval, so clients can tell a quiet
        combiner from a dead one. One loop for all streams (a timer per stream costs memory and CPU per
        client), in passes through the interval, so they do not all go in one burst."""
        while True:
            every = self.heartbeat_interval_s()
            step = every / _HEARTBEAT_PASSES
            await self._clock.sleep(step)
            now, beat = self._clock.now(), TaskInfo("heartbeat", timeout_s=every)
            for conn in list(self._clients.values()):
                if not conn.shed and conn.tasks.empty() and now - conn.last_sent >= every - step / 2:
                    conn.tasks.put_nowait(beat)
                    conn.last_sent = now
