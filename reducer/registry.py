"""Which combiners are alive, which clients each serves, and where a new client should go.

A combiner is live from a heartbeat until it misses them for ``combiner_timeout_s``, or until a call
to it finds it unreachable (:meth:`CombinerRegistry.mark_unreachable`): from then on it gets no new
clients and no rounds until its next heartbeat. Clients are sent to the least-loaded live combiner
when they ask (on start and whenever their stream breaks). A combiner that joins or comes back empty
gets clients by rebalancing: each heartbeat is answered with how many clients that combiner should
shed (:meth:`CombinerRegistry.to_shed`); it ends the task streams of that many idle clients, which
ask again and are sent to the least-loaded combiner.

When sheds are ordered: only when the registry knows every live combiner's load first-hand, and never
while a sync round is being planned or running.

- First-hand: each live combiner has heartbeated since it registered with this registry, and, for
  ``combiner_timeout_s`` after :meth:`CombinerRegistry.load`, every combiner the store listed as
  online has too (a restarted reducer must not take a combiner that re-registered but has not listed
  its clients yet, or has not come back yet, for an empty one). After that, a silent one is not live.
- Sync rounds: the session runner holds :meth:`CombinerRegistry.round_in_progress` from the round's
  planning until its ``RunRound`` calls have returned, so the clients a plan counts on are not sent
  away under it. Sheds happen between rounds; on entering the next round the runner waits, bounded by
  ``rebalance_interval_s`` on the clock, for a shed ordered since to show in the heartbeats
  (:meth:`CombinerRegistry.wait_for_sheds`), so the plan sees the moved clients where they now are.
- Async sessions do not hold it: only idle clients are shed (none with a train task), and a moved
  client that connects to a combiner with a running async call is given a task there by that call
  (``AsyncRun.client_connected``); a combiner that gets its first clients gets a call of its own at
  the next launch. No plan counts on a shed client.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from fedn.clock import Clock, SystemClock
from fedn.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from fedn.records import ClientRecord, CombinerRecord, NodeStatus, now
from fedn.store.base import StateStore

__all__ = ["CombinerRegistry", "shed_count"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_PENDING_GRACE_S = 30.0  # an assigned client that has not connected by then no longer counts


@dataclass
class _Live:
    record: CombinerRecord
    last_seen: float  # on the registry's clock
    client_ids: set[str] = field(default_factory=set)
    # clients sent here that its heartbeats do not list yet, with when: a heartbeat sent before a
    # client connected must not make the combiner look emptier than it is about to be
    pending: dict[str, float] = field(default_factory=dict)
    last_shed: float | None = None  # when it was last told to shed clients, on the registry's clock
    heard: bool = False  # it heartbeated since it registered here: its load is known first-hand
    recount: bool = False  # a shed was ordered since its last heartbeat: its count may be out of date

    def load(self) -> int:
        return len(self.client_ids | self.pending.keys())


class CombinerRegistry:
    """Liveness from heartbeats (on an injected clock) and least-loaded assignment of clients."""

    def __init__(
        self,
        state: StateStore,
        *,
        combiner_timeout_s: float,
        clock: Clock | None = None,
        rebalance: bool = True,
        rebalance_interval_s: float = 5.0,
        max_combiners: int = 1000,
        max_clients_per_combiner: int = 10_000,
    ) -> None:
        """``max_combiners`` live at once (each costs a thread in every round, and memory here);
        ``max_clients_per_combiner`` in one heartbeat."""
        self._max_combiners = max_combiners
        self._max_clients = max_clients_per_combiner
        self._state = state
        self._timeout_s = combiner_timeout_s
        self._rebalance = rebalance
        self._rebalance_interval_s = rebalance_interval_s
        self._clock = clock or SystemClock()
        self._combiners: dict[str, _Live] = {}
        self._waiters: set[threading.Event] = set()  # one per wait_for_clients call in progress
        self._started = self._clock.now()
        self._unheard: set[str] = set()  # online in the store when loaded, no heartbeat here since
        self._rounds = 0  # sync rounds being planned or running
        self._shed_total: int | None = None  # clients online when a shed not yet settled was ordered
        self.changed = threading.Condition()

    def load(self) -> None:
        """Forget nothing persisted, but treat every known combiner as offline until it speaks again."""
        with self.changed:
            self._started = self._clock.now()
        for record in self._state.list_combiners():
            if record.status != NodeStatus.OFFLINE:
                with self.changed:
                    self._unheard.add(record.id)
                self._state.put_combiner(record.model_copy(update={"status": NodeStatus.OFFLINE, "num_clients": 0}))

    def register(self, combiner_id: str, name: str, address: str) -> CombinerRecord:
        """FailedPrecondition if ``combiner_id`` is not live and ``max_combiners`` others are."""
        self.refresh()  # a silent one's place is free
        with self.changed:
            live = sum(x.record.status == NodeStatus.ONLINE for x in self._combiners.values())
            known = self._combiners.get(combiner_id)
            if (known is None or known.record.status != NodeStatus.ONLINE) and live >= self._max_combiners:
                raise FailedPrecondition(
                    f"{live} combiners are live; at most {self._max_combiners} (max_combiners): "
                    f"combiner {combiner_id!r} is not registered"
                )
            if len(self._combiners) >= 2 * self._max_combiners:  # forget offline ones; each registers again
                self._combiners = {k: x for k, x in self._combiners.items() if x.record.status == NodeStatus.ONLINE}
            try:
                previous = self._state.get_combiner(combiner_id)
                registered_at = previous.registered_at
            except NotFound:
                registered_at = now()
            record = CombinerRecord(
                id=combiner_id, name=name or combiner_id, address=address, registered_at=registered_at, last_seen=now()
            )
            old = self._combiners.get(combiner_id)
            self._combiners[combiner_id] = _Live(record, self._clock.now(), old.client_ids if old else set())
            self._state.put_combiner(record)
            self._notify()
        logger.info("combiner %s registered at %s", combiner_id, address)
        return record

    def heartbeat(self, combiner_id: str, client_ids: list[str]) -> CombinerRecord:
        """InvalidArgument if it lists more than ``max_clients_per_combiner`` clients (nothing changes)."""
        if len(client_ids) > self._max_clients:
            raise InvalidArgument(
                f"combiner {combiner_id!r} reported {len(client_ids)} clients; "
                f"at most {self._max_clients} (max_clients_per_combiner)"
            )
        with self.changed:
            live = self._combiners.get(combiner_id)
            if live is None:
                raise NotFound(f"combiner {combiner_id!r} is not registered")
            came_back = live.record.status == NodeStatus.OFFLINE
            current = set(client_ids)
            self._mark_clients(current - live.client_ids, combiner_id, NodeStatus.ONLINE)
            self._mark_clients(live.client_ids - current, combiner_id, NodeStatus.OFFLINE)
            clock = self._clock.now()
            live.pending = {
                c: at for c, at in live.pending.items() if c not in current and clock - at < _PENDING_GRACE_S
            }
            live.client_ids, live.last_seen = current, clock
            live.heard, live.recount = True, False
            self._unheard.discard(combiner_id)
            live.record = live.record.model_copy(
                update={"status": NodeStatus.ONLINE, "num_clients": len(current), "last_seen": now()}
            )
            self._state.put_combiner(live.record)
            if came_back:
                logger.info("combiner %s is back online", combiner_id)
            self._notify()
            return live.record

    def to_shed(self, combiner_id: str) -> int:
        """How many clients ``combiner_id`` should let go so the live combiners even out (see
        :func:`shed_count`); 0 when rebalancing is off, it was told to shed less than
        ``rebalance_interval_s`` ago (its clients are still on their way to the others), a sync round is
        in progress, or some combiner's load is not known first-hand yet (see the module's docstring)."""
        if not self._rebalance:
            return 0
        self.refresh()
        with self.changed:
            live = self._combiners.get(combiner_id)
            if live is None or live.record.status != NodeStatus.ONLINE:
                return 0
            at = self._clock.now()
            if live.last_shed is not None and at - live.last_shed < self._rebalance_interval_s:
                return 0
            online = [x for x in self._combiners.values() if x.record.status == NodeStatus.ONLINE]
            if self._rounds or not all(x.heard for x in online):
                return 0
            if self._unheard and at - self._started < self._timeout_s:
                return 0
            loads = [x.load() for x in online]
            shed = shed_count(live.load(), loads)
            if shed:
                live.last_shed = at
                for x in online:
                    x.recount = True
                self._shed_total = max(self._shed_total or 0, sum(x.record.num_clients for x in online))
                logger.info("combiner %s holds %d (loads %s): told to shed %d", combiner_id, live.load(), loads, shed)
            return shed

    @contextlib.contextmanager
    def round_in_progress(self) -> Iterator[None]:
        """No shed is ordered while this is held (by any thread; it nests): around a sync round's
        planning and its ``RunRound`` calls."""
        with self.changed:
            self._rounds += 1
        try:
            yield
        finally:
            with self.changed:
                self._rounds -= 1

    def wait_for_sheds(self, stop: threading.Event) -> bool:
        """Block until the sheds ordered since the last call show in the heartbeats (every live combiner
        heartbeated since, and they list as many clients as before), ``rebalance_interval_s`` passed on
        the clock, or ``stop``; returns whether they did. Called inside :meth:`round_in_progress`, so
        no new shed comes between this and the plan. Either way, the next call does not wait for them."""
        settled = self._wait(self._sheds_settled, bool, self._rebalance_interval_s, stop)
        with self.changed:
            self._shed_total = None
        return settled

    def _sheds_settled(self) -> bool:
        self.refresh()
        with self.changed:
            if self._shed_total is None:
                return True
            online = [x for x in self._combiners.values() if x.record.status == NodeStatus.ONLINE]
            if any(x.recount for x in online):
                return False
            return sum(x.record.num_clients for x in online) >= self._shed_total

    def _mark_clients(self, client_ids: set[str], combiner_id: str, status: NodeStatus) -> None:
        """One read and one write for all of them: a heartbeat may bring thousands of new clients, and a
        durable write each (held under the registry's lock) took minutes for 10,000."""
        if not client_ids:
            return
        known = self._state.get_clients(sorted(client_ids))
        seen_at, changed = now(), []
        for client_id in sorted(client_ids):
            client = known.get(client_id) or ClientRecord(id=client_id, name=client_id)
            if status == NodeStatus.OFFLINE and client.combiner_id not in (None, combiner_id):
                continue  # it has moved on to another combiner
            changed.append(
                client.model_copy(update={"status": status, "combiner_id": combiner_id, "last_seen": seen_at})
            )
        self._state.put_clients(changed)

    def refresh(self) -> None:
        """Mark combiners whose heartbeats stopped as offline, and their clients with them."""
        with self.changed:
            for live in self._combiners.values():
                silent = self._clock.now() - live.last_seen > self._timeout_s
                if silent and live.record.status == NodeStatus.ONLINE:
                    logger.warning("combiner %s missed heartbeats for %.0fs: offline", live.record.id, self._timeout_s)
                    self._go_offline(live)

    def mark_unreachable(self, combiner_id: str, reason: str) -> None:
        """A call to ``combiner_id`` got no answer (unavailable, or out of time): offline, with its clients,
        until its next heartbeat, so no client or round is sent to it meanwhile."""
        with self.changed:
            live = self._combiners.get(combiner_id)
            if live is None or live.record.status != NodeStatus.ONLINE:
                return
            logger.warning("combiner %s unreachable (%s): offline until its next heartbeat", combiner_id, reason)
            self._go_offline(live)

    def _go_offline(self, live: _Live) -> None:
        """Called with ``changed`` held."""
        self._mark_clients(live.client_ids, live.record.id, NodeStatus.OFFLINE)
        live.client_ids = set()
        live.record = live.record.model_copy(update={"status": NodeStatus.OFFLINE, "num_clients": 0})
        self._state.put_combiner(live.record)
        self._notify()

    def client_ids(self, combiner_id: str) -> list[str]:
        """The clients of ``combiner_id``'s last heartbeat (none once it went offline), sorted."""
        with self.changed:
            live = self._combiners.get(combiner_id)
            return sorted(live.client_ids) if live is not None else []

    def live(self) -> list[CombinerRecord]:
        self.refresh()
        with self.changed:
            return sorted(
                (x.record for x in self._combiners.values() if x.record.status == NodeStatus.ONLINE), key=lambda r: r.id
            )

    def clients_online(self) -> int:
        return sum(c.num_clients for c in self.live())

    def assign(self, name: str, client_id: str | None = None) -> dict[str, str]:
        """Send a client to the live combiner with the fewest clients; keeps a known client's id."""
        self.refresh()
        with self.changed:
            candidates = [x for x in self._combiners.values() if x.record.status == NodeStatus.ONLINE]
            if not candidates:
                raise Unavailable("no live combiner to assign the client to; is one running and registered?")
            target = min(candidates, key=lambda x: (x.load(), x.record.id))
            try:
                client = self._state.get_client(client_id) if client_id else None
            except NotFound:
                client = None
            if client is None:
                client = ClientRecord(name=name, status=NodeStatus.OFFLINE, **({"id": client_id} if client_id else {}))
            client = client.model_copy(update={"name": name, "combiner_id": target.record.id, "assigned_at": now()})
            self._state.put_client(client)
            for live in self._combiners.values():
                live.pending.pop(client.id, None)
            target.pending[client.id] = self._clock.now()
        logger.info("client %s (%s) assigned to combiner %s", client.id, name, target.record.id)
        return {"client_id": client.id, "combiner_id": target.record.id, "combiner_address": target.record.address}

    def wait_for_clients(self, count: int, timeout_s: float, stop: threading.Event) -> int:
        """Block until live combiners hold ``count`` clients, ``timeout_s`` passed on the clock, or
        ``stop`` (with :meth:`wake_waiters`); returns the count seen."""
        return self._wait(self.clients_online, lambda seen: seen >= count, timeout_s, stop)

    def wait_for_combiners(
        self, combiner_ids: list[str], timeout_s: float, stop: threading.Event
    ) -> list[CombinerRecord]:
        """Block until every one of ``combiner_ids`` is live, ``timeout_s`` passed on the clock, or
        ``stop``; returns the live combiners (all of them, not only those asked for)."""
        wanted = set(combiner_ids)
        return self._wait(self.live, lambda live: wanted <= {c.id for c in live}, timeout_s, stop)

    def _wait(
        self, look: Callable[[], T], is_enough: Callable[[T], bool], timeout_s: float, stop: threading.Event
    ) -> T:
        deadline = self._clock.now() + timeout_s
        changed = threading.Event()
        with self.changed:
            self._waiters.add(changed)
        try:
            while True:
                changed.clear()  # before looking: a change after the look wakes the wait below
                seen = look()
                remaining = deadline - self._clock.now()
                if is_enough(seen) or remaining <= 0 or stop.is_set():
                    return seen
                # liveness is judged on the clock too: look again at least once a (clock) second
                self._clock.wait(changed, min(remaining, 1.0))
        finally:
            with self.changed:
                self._waiters.discard(changed)

    def wake_waiters(self) -> None:
        """Make every :meth:`wait_for_clients` look again now (e.g. because its ``stop`` was set)."""
        with self.changed:
            self._notify()

    def _notify(self) -> None:
        """Called with ``changed`` held."""
        self.changed.notify_all()
        for waiter in self._waiters:
            waiter.set()


def shed_count(load: int, loads: list[int]) -> int:
    """How many of its ``load`` clients a combiner sheds, given the loads of every live combiner (its
    own included): down to the mean, rounded up, but only when the spread between it and the emptiest
    one exceeds one client and 10% of the mean, and some combiner is below the mean to take them."""
    if len(loads) < 2:
        return 0
    mean = sum(loads) / len(loads)
    lowest = min(loads)
    if lowest >= mean or load - lowest <= max(1, math.ceil(0.1 * mean)):
        return 0
    return max(0, load - math.ceil(mean))
