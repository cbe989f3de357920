"""Connected clients: one task stream each, and one heartbeat loop for all of them."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from fedn.clock import Clock
from fedn.errors import InvalidArgument
from fedn.wire import TaskInfo

__all__ = ["HEARTBEAT", "ClientConnection", "ClientHub"]

logger = logging.getLogger(__name__)

HEARTBEAT = TaskInfo("heartbeat")


@dataclass(eq=False)
class ClientConnection:
    """One open task stream; the stream handler is the only writer, fed through ``tasks``."""

    client_id: str
    name: str
    tasks: asyncio.Queue = field(default_factory=asyncio.Queue)


class ClientHub:
    """The task streams open now, by client id; a client that connects again replaces its old stream."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._clients: dict[str, ClientConnection] = {}

    def connect(self, client_id: str, name: str) -> tuple[ClientConnection, bool]:
        """The new stream, and whether it replaced an older one of the same client."""
        if not client_id:
            raise InvalidArgument("client_id is required")
        previous = self._clients.get(client_id)
        conn = ClientConnection(client_id, name or client_id)
        self._clients[client_id] = conn
        logger.info(
            "client %s (%s) connected%s; %d connected",
            client_id,
            conn.name,
            " again, replacing its old stream" if previous else "",
            len(self._clients),
        )
        return conn, previous is not None

    def disconnect(self, conn: ClientConnection) -> bool:
        """Forget ``conn``; False if a newer stream of the same client had already replaced it."""
        if self._clients.get(conn.client_id) is not conn:
            return False
        del self._clients[conn.client_id]
        logger.info("client %s disconnected; %d connected", conn.client_id, len(self._clients))
        return True

    def send(self, client_id: str, task: TaskInfo) -> None:
        """Queue ``task`` on the client's stream; a client that is gone misses it."""
        conn = self._clients.get(client_id)
        if conn is not None:
            conn.tasks.put_nowait(task)

    def is_connected(self, client_id: str) -> bool:
        return client_id in self._clients

    def connected_client_ids(self) -> list[str]:
        return sorted(self._clients)

    def __len__(self) -> int:
        return len(self._clients)

    async def send_heartbeats(self, interval_s: float) -> None:
        """Every ``interval_s``, a heartbeat to each stream with nothing queued, so clients can tell a
        quiet combiner from a dead one. One loop for all streams: a timer per stream costs memory and
        CPU per client."""
        while True:
            await self._clock.sleep(interval_s)
            for conn in list(self._clients.values()):
                if conn.tasks.empty():
                    conn.tasks.put_nowait(HEARTBEAT)
