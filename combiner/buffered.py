"""Asynchronous (FedBuff) sessions at a combiner.

Clients train continuously: each one gets a new task, on the newest global model this combiner
knows, as soon as its previous answer is in. Each update is folded as a delta from the model it was
trained on, scaled by its staleness (``fedn.aggregation.staleness``). A ``RunRound`` call of an
async plan returns when ``buffer_size`` updates are folded; updates arriving afterwards start the
next buffer, so nothing waits for the reducer. The reducer announces each new global version
(``AnnounceModel``), and the final one ends the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fedn import heap
from fedn.aggregation import MetricsAccumulator, WeightedMean, staleness_weight
from fedn.codec import NamedArrays, TensorSpec, encode_model_chunks
from fedn.errors import Conflict, FailedPrecondition, InvalidArgument, PayloadTooLarge
from fedn.models import partial_key
from fedn.records import ClientFailureRecord, RoundPlan, RoundResult
from fedn.wire import TaskInfo, UpdateHeaderInfo

if TYPE_CHECKING:
    from combiner.grants import GrantGate
    from combiner.rounds import RoundService

__all__ = ["FOLD_IN_THREAD_BYTES", "BufferedRun", "run_id_for"]

logger = logging.getLogger(__name__)

_KNOWN_VERSIONS = 1000  # model ids remembered per run; older bases are refused as too stale
_MAX_SEALED = 2  # full buffers waiting for the reducer; past this the open buffer grows beyond K
_BASES_KEPT = 2
_MAX_BACKOFF_S = 30.0
FOLD_IN_THREAD_BYTES = 4 << 20  # larger updates are checked and folded off the event loop


class _Stale(FailedPrecondition):
    """An update too old to fold; its client is not to blame."""


@dataclass(eq=False)
class _Buffer:
    """Updates folded since the last partial: their staleness-scaled deltas, metrics and senders."""

    mean: WeightedMean
    metrics: MetricsAccumulator = field(default_factory=MetricsAccumulator)
    accepted: list[str] = field(default_factory=list)


def run_id_for(session_id: str) -> str:
    """The round id an async session's tasks carry (clients echo it in their updates)."""
    return f"async-{session_id}"


@dataclass(eq=False)
class BufferedRun:
    """One async session at this combiner: who is training, the buffer, the known global versions."""

    service: RoundService
    plan: RoundPlan
    manifest: list[TensorSpec]
    lease_s: float
    model_id: str = ""
    version: int = 0
    versions: OrderedDict[str, int] = field(default_factory=OrderedDict)
    buffer: _Buffer | None = None  # the open one
    sealed: deque[_Buffer] = field(default_factory=deque)  # full buffers of exactly K, oldest first
    bases: OrderedDict[str, NamedArrays] = field(default_factory=OrderedDict)  # decoded base versions
    failures: dict[str, str] = field(default_factory=dict)
    num_rejected: int = 0
    num_stale: int = 0
    training: set[str] = field(default_factory=set)  # clients with a task out
    uploading: set[str] = field(default_factory=set)
    waiting: deque[str] = field(default_factory=deque)  # clients waiting for a training slot
    strikes: dict[str, int] = field(default_factory=dict)  # consecutive failures, for back-off
    closed: bool = False
    full: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    gate: GrantGate | None = None  # upload slots
    tasks: GrantGate | None = None  # tasks out, paced by downloads
    calls: int = 0  # RunRound calls waiting on this run
    last_call: float = 0.0
    watchdog: asyncio.Task | None = None

    def __post_init__(self) -> None:
        self.buffer = _Buffer(WeightedMean(self.manifest))
        self.model_id, self.version = self.plan.model_id, self.plan.model_version
        self.versions[self.model_id] = self.version
        self.last_call = self.service.clock()
        self.watchdog = asyncio.create_task(self._expire(), name=f"async-lease-{self.plan.session_id}")

    @property
    def run_id(self) -> str:
        return run_id_for(self.plan.session_id)

    @property
    def session_id(self) -> str:
        return self.plan.session_id

    # -- global versions -----------------------------------------------------

    def update_plan(self, plan: RoundPlan) -> None:
        """A later call of the same session: new config, buffer size, cap, and maybe a newer model."""
        self.plan = plan
        self.advance(plan.model_id, plan.model_version)
        self._fill_slots()

    def advance(self, model_id: str, version: int) -> bool:
        """Hand out ``model_id`` from now on if it is newer than what clients get now."""
        if version <= self.version:
            return False
        self.model_id, self.version = model_id, version
        self.versions[model_id] = version
        while len(self.versions) > _KNOWN_VERSIONS:
            self.versions.popitem(last=False)
        logger.info("async session %s: global model is now %s (version %d)", self.session_id, model_id, version)
        return True

    # -- clients -------------------------------------------------------------

    def start(self, client_ids: list[str]) -> None:
        for client_id in client_ids:
            self.dispatch(client_id)

    def dispatch(self, client_id: str) -> None:
        """Give ``client_id`` a task on the newest model, or queue it if the concurrency cap is reached."""
        if self.closed or client_id in self.training:
            return
        conn = self.service.connection(client_id)
        if conn is None:
            return
        cap = self.plan.max_clients
        if cap and len(self.training) >= cap:
            if client_id not in self.waiting:
                self.waiting.append(client_id)
            return
        self.training.add(client_id)
        if self.tasks is None or self.tasks.request(client_id):
            self.send_task(client_id)

    def send_task(self, client_id: str) -> None:
        """The task goes out when its download is granted, so it names the newest model at that moment."""
        conn = self.service.connection(client_id)
        if self.closed or conn is None or client_id not in self.training:
            return
        conn.tasks.put_nowait(
            TaskInfo(
                "train",
                self.run_id,
                self.session_id,
                self.model_id,
                self.version + 1,
                self.plan.timeout_s,
                self.plan.config,
            )
        )

    def downloaded(self, client_id: str) -> None:
        if self.tasks is not None:
            self.tasks.release(client_id)

    def _fill_slots(self) -> None:
        cap = self.plan.max_clients
        while self.waiting and not self.closed and (not cap or len(self.training) < cap):
            self.dispatch(self.waiting.popleft())

    def release(self, client_id: str, ok: bool) -> None:
        """``client_id`` answered: free its slot, then give it its next task (after a back-off if it failed)."""
        self.training.discard(client_id)
        if self.tasks is not None:
            self.tasks.release(client_id)
        self._fill_slots()
        if ok:
            self.strikes.pop(client_id, None)
            self.dispatch(client_id)
            return
        strikes = self.strikes[client_id] = self.strikes.get(client_id, 0) + 1
        delay = min(_MAX_BACKOFF_S, 0.5 * 2 ** (strikes - 1))
        asyncio.get_running_loop().call_later(delay, self.dispatch, client_id)

    def left(self, client_id: str) -> None:
        self.training.discard(client_id)
        if self.tasks is not None:
            self.tasks.release(client_id)
        if self.gate is not None:
            self.gate.release(client_id)
        with contextlib.suppress(ValueError):
            self.waiting.remove(client_id)
        self._fill_slots()

    def expect(self, client_id: str) -> None:
        """Raise unless ``client_id`` has a task out and is not already uploading."""
        if self.closed:
            raise FailedPrecondition(f"async session {self.session_id!r} has ended on this combiner")
        if client_id not in self.training:
            raise FailedPrecondition(f"client {client_id!r} has no open task in async session {self.session_id!r}")
        if client_id in self.uploading:
            raise Conflict(f"client {client_id!r} is already uploading an update")

    def report_failure(self, client_id: str, error: str) -> None:
        self.expect(client_id)
        text = (error or "unspecified error")[:2000]
        logger.warning("client %s failed in async session %s: %s", client_id, self.session_id, text)
        self.failures[client_id] = text
        self.release(client_id, ok=False)

    # -- updates -------------------------------------------------------------

    async def receive(self, header: UpdateHeaderInfo, chunks: AsyncIterator[bytes]) -> int:
        """Validate one update completely, then fold its staleness-scaled delta; returns the buffer's count."""
        client_id = header.client_id
        self.expect(client_id)
        self.uploading.add(client_id)
        ok = False  # a refused update is the client's fault unless it was only too old
        big = header.model.payload_bytes > FOLD_IN_THREAD_BYTES
        try:
            self.service.check_header(self.manifest, header)
            self._staleness(header.base_model_id)  # refuse a too-old base before the upload takes a slot
            async with self.gate.slot(client_id):
                async with self.service.staged_update(self.manifest, header, chunks) as arrays:
                    base = await self._base(header.base_model_id)
                    async with self.lock:
                        if self.closed:
                            raise FailedPrecondition(f"async session {self.session_id!r} ended during the upload")
                        staleness = self._staleness(header.base_model_id)  # the model may have moved on meanwhile
                        scale = staleness_weight(staleness, self.plan.staleness_exponent)
                        buffer = self.buffer
                        fold = functools.partial(buffer.mean.add, arrays, header.num_examples, base=base, scale=scale)
                        await asyncio.to_thread(fold) if big else fold()
                        buffer.metrics.add({**header.metrics, "staleness": staleness}, header.num_examples)
                        buffer.accepted.append(client_id)
                        count = buffer.mean.count
                        if count >= max(1, self.plan.buffer_size) and len(self.sealed) < _MAX_SEALED:
                            self._seal()
                del arrays, base
            if big:  # give the staged buffer's memory back
                await asyncio.to_thread(heap.trim)
            ok = True
        except _Stale:
            ok = True  # not the client's fault: its next task, on the newest model, goes out at once
            raise
        except (InvalidArgument, PayloadTooLarge) as exc:  # the update's own fault
            self.num_rejected += 1
            self.failures[client_id] = f"update rejected: {exc.message}"
            logger.warning("rejected update from client %s (async %s): %s", client_id, self.session_id, exc.message)
            raise
        finally:
            self.uploading.discard(client_id)
            self.release(client_id, ok)
        return count

    async def _base(self, model_id: str) -> NamedArrays:
        """The version an update was trained on, decoded. The last two are kept: most updates in a burst
        share a base, and a large model is otherwise read from the store once per update."""
        base = self.bases.get(model_id)
        if base is None:
            base = await self.service.model_arrays(model_id)
            self.bases[model_id] = base
            while len(self.bases) > _BASES_KEPT:
                self.bases.popitem(last=False)
        self.bases.move_to_end(model_id)
        return base

    def _staleness(self, base_model_id: str) -> int:
        base_version = self.versions.get(base_model_id)
        if base_version is None:
            self.num_stale += 1
            raise _Stale(
                f"update trained on {base_model_id!r}, which is not a recent global model of async session "
                f"{self.session_id!r}"
            )
        staleness = max(0, self.version - base_version)
        limit = self.plan.max_staleness
        if limit and staleness > limit:
            self.num_stale += 1
            raise _Stale(
                f"update is {staleness} versions stale; session {self.session_id!r} drops updates older than {limit}"
            )
        return staleness

    # -- partials ------------------------------------------------------------

    def _seal(self) -> None:
        """The open buffer is full: set it aside for the next call, so each partial holds exactly K."""
        self.sealed.append(self.buffer)
        self.buffer = _Buffer(WeightedMean(self.manifest))
        self.full.set()

    async def flush(self, plan: RoundPlan) -> RoundResult:
        """Wait for a full buffer (or the plan's timeout: then the open one), and store it as one partial."""
        self.calls += 1
        try:
            deadline = self.service.clock() + plan.timeout_s
            while not self.closed and not self.sealed:
                remaining = deadline - self.service.clock()
                if remaining <= 0:
                    break
                self.full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.full.wait(), timeout=remaining)
            async with self.lock:
                if not self.sealed:  # the timeout: whatever the open buffer has
                    self._seal()
                done = self.sealed.popleft()
                if self.buffer.mean.count >= max(1, self.plan.buffer_size) and len(self.sealed) < _MAX_SEALED:
                    self._seal()  # it overflowed while the sealed ones waited
                failures, self.failures = self.failures, {}
                rejected, self.num_rejected = self.num_rejected, 0
                stale, self.num_stale = self.num_stale, 0
                if not self.sealed:
                    self.full.clear()
            count = 0 if self.closed else done.mean.count  # once the session is over, its last updates are not wanted
            key, total_weight = "", 0.0
            if count:
                partial = await asyncio.to_thread(done.mean.finish)
                key = partial_key(plan.round_id, self.service.combiner_id)
                await asyncio.to_thread(self.service.models.put, key, encode_model_chunks(partial.arrays))
                total_weight = partial.total_weight
                del partial
            if stale:
                failures.setdefault("", f"{stale} updates dropped as too stale")
            logger.info(
                "async session %s on %s: partial of %d updates (version %d), %d rejected, %d stale, %d training",
                self.session_id,
                self.service.combiner_id,
                count,
                self.version,
                rejected,
                stale,
                len(self.training),
            )
            return RoundResult(
                round_id=plan.round_id,
                combiner_id=self.service.combiner_id,
                partial_key=key,
                total_weight=total_weight,
                num_selected=len(set(done.accepted) | failures.keys() - {""}),
                num_updates=count,
                num_rejected=rejected,
                failures=[
                    ClientFailureRecord(client_id=c, combiner_id=self.service.combiner_id, error=e)
                    for c, e in sorted(failures.items())
                ],
                metrics=done.metrics.summary() if count else {},
                client_ids=done.accepted if count else [],
            )
        finally:
            self.calls -= 1
            self.last_call = self.service.clock()

    # -- the end ---------------------------------------------------------------

    def end(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.full.set()
        self.training.clear()
        self.waiting.clear()
        for gate in (self.gate, self.tasks):
            if gate is not None:
                gate.close()
        if self.watchdog is not None and self.watchdog is not asyncio.current_task():
            self.watchdog.cancel()
        logger.info("async session %s ended on %s: %s", self.session_id, self.service.combiner_id, reason)

    async def _expire(self) -> None:
        """End the run if no reducer call has waited on it for ``lease_s`` (the reducer is gone)."""
        while not self.closed:
            await asyncio.sleep(min(1.0, self.lease_s / 4))
            if self.calls == 0 and self.service.clock() - self.last_call > self.lease_s:
                self.end(f"no call from the reducer for {self.lease_s:g}s")
