"""Asynchronous (FedBuff) sessions at a combiner.

Clients train continuously: each one gets a new task, on the newest global version this combiner
knows, as soon as its previous answer is in. Each update is folded as a delta from the version it was
trained on, scaled by its staleness (``fedn.aggregation.staleness``). A ``RunRound`` call of an async
plan asks for one flush: it returns when ``buffer_size`` updates are folded; updates arriving
afterwards fill the next buffer, so nothing waits for the reducer. The reducer announces each new
global version (``AnnounceModel``), and the final one ends the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from combiner.async_trainers import AsyncTrainers
from combiner.model_cache import CachedModel
from combiner.run import UPDATE_FAULTS, RoundMetrics, RunContext, Tally, store_result, train_task
from combiner.staging import is_big
from fedn.aggregation import WeightedMean, staleness_weight
from fedn.codec import NamedArrays
from fedn.errors import Conflict, FailedPrecondition, InvalidArgument
from fedn.records import RoundPlan, RoundResult
from fedn.wire import TaskInfo, UpdateHeaderInfo

__all__ = ["AsyncRun", "async_run_id"]

logger = logging.getLogger(__name__)

_KNOWN_VERSIONS = 1000  # model ids remembered per run; older bases are refused as too stale
_MAX_SEALED = 2  # full buffers waiting for a flush; past this the open buffer grows beyond K
_BASES_KEPT = 2


class _Stale(FailedPrecondition):
    """An update too old to fold; its client is not to blame."""


@dataclass(eq=False)
class _FlushBuffer:
    """Updates folded since the last flush: their staleness-scaled deltas, metrics and senders."""

    mean: WeightedMean
    metrics: RoundMetrics = field(default_factory=RoundMetrics)
    accepted: list[str] = field(default_factory=list)


def async_run_id(session_id: str) -> str:
    """The round id an async session's tasks carry (clients echo it in their updates)."""
    return f"async-{session_id}"


class AsyncRun:
    """One async session at this combiner; implements :class:`combiner.run.Run`.

    Holds who is training, the open buffer (and up to ``_MAX_SEALED`` full ones), and the global
    versions it knows. It ends on the final announcement, a sync round, or when no flush was asked
    for during ``lease_s`` (the reducer is gone).
    """

    def __init__(self, ctx: RunContext, plan: RoundPlan, model: CachedModel, *, lease_s: float) -> None:
        self._ctx = ctx
        self.plan = plan
        self._manifest = model.manifest
        self._lease_s = lease_s
        self.model_id, self.version = plan.model_id, plan.model_version
        self._versions: OrderedDict[str, int] = OrderedDict({self.model_id: self.version})
        self._buffer = _FlushBuffer(WeightedMean(self._manifest))  # the open one
        self._sealed: deque[_FlushBuffer] = deque()  # full buffers of exactly K, oldest first
        self._bases: OrderedDict[str, NamedArrays] = OrderedDict()  # decoded base versions
        self._tally = Tally(metrics=ctx.metrics)
        self._num_stale = 0
        self._uploading: set[str] = set()
        self._closed = False
        self._full = asyncio.Event()
        self._lock = asyncio.Lock()
        self._calls = 0  # flushes waiting on this run
        self._last_call = ctx.clock.now()
        self._watchdog: asyncio.Task | None = None
        grant = TaskInfo("upload_grant", self.run_id, plan.session_id)
        self._uploads = ctx.stager.upload_gate(self._manifest, lambda c: ctx.clients.send(c, grant))
        self._trainers = AsyncTrainers(ctx.clients, ctx.models, model, ctx.clock, self._next_task(), plan.max_clients)

    @staticmethod
    def check_plan(plan: RoundPlan) -> None:
        if plan.timeout_s <= 0:
            raise InvalidArgument("round timeout must be positive")
        if plan.buffer_size < 1:
            raise InvalidArgument(f"async buffer_size must be at least 1, got {plan.buffer_size}")
        if plan.aggregator != "fedavg":
            raise InvalidArgument(
                f"async sessions fold deltas with fedavg; aggregator {plan.aggregator!r} needs mode sync"
            )

    @property
    def run_id(self) -> str:
        return async_run_id(self.plan.session_id)

    @property
    def session_id(self) -> str:
        return self.plan.session_id

    @property
    def closed(self) -> bool:
        return self._closed

    def start(self) -> None:
        """Give every connected client a task, and watch the lease."""
        self._watchdog = asyncio.create_task(self._expire(), name=f"async-lease-{self.session_id}")
        for client_id in self._ctx.clients.connected_client_ids():
            self._trainers.dispatch(client_id)

    # -- global versions -----------------------------------------------------------

    def update_plan(self, plan: RoundPlan) -> None:
        """A later flush of the same session: new config, buffer size, cap, and maybe a newer version."""
        self.plan = plan
        self._trainers.max_clients = plan.max_clients
        self._trainers.task = self._next_task()
        self.advance(plan.model_id, plan.model_version)
        self._trainers.fill()

    def advance(self, model_id: str, version: int) -> bool:
        """Hand out ``model_id`` from now on if it is newer than what clients get now."""
        if version <= self.version:
            return False
        self.model_id, self.version = model_id, version
        self._trainers.task = self._next_task()
        self._versions[model_id] = version
        while len(self._versions) > _KNOWN_VERSIONS:
            self._versions.popitem(last=False)
        logger.info("async session %s: global model is now %s (version %d)", self.session_id, model_id, version)
        return True

    # -- clients -------------------------------------------------------------------

    def _next_task(self) -> TaskInfo:
        return train_task(self.run_id, self.plan, self.model_id, self.version + 1)

    def client_connected(self, client_id: str, replaced: bool) -> None:
        if self._closed:
            return
        if replaced:
            self.client_left(client_id)  # its task went down the old stream
        self._trainers.dispatch(client_id)

    def client_left(self, client_id: str) -> None:
        self._trainers.left(client_id)
        self._uploads.release(client_id)

    def downloaded(self, model_id: str, client_id: str) -> None:
        """Base versions are served all along, so the cached model is kept."""
        self._trainers.downloaded(client_id)

    def _expect(self, client_id: str) -> None:
        if self._closed:
            raise FailedPrecondition(f"async session {self.session_id!r} has ended on this combiner")
        if client_id not in self._trainers:
            raise FailedPrecondition(f"client {client_id!r} has no open task in async session {self.session_id!r}")
        if client_id in self._uploading:
            raise Conflict(f"client {client_id!r} is already uploading an update")

    def admit(self, client_id: str) -> tuple[bool, int]:
        self._expect(client_id)
        return self._uploads.ask(client_id)

    def report_failure(self, client_id: str, error: str) -> None:
        self._expect(client_id)
        logger.warning("client %s failed in async session %s: %s", client_id, self.session_id, error)
        self._tally.fail(client_id, error)
        self._trainers.release(client_id, ok=False)

    # -- updates -------------------------------------------------------------------

    async def receive(self, header: UpdateHeaderInfo, chunks: AsyncIterator[bytes]) -> int:
        """Validate one update completely, then fold its staleness-scaled delta; returns the open buffer's count."""
        client_id, stager = header.client_id, self._ctx.stager
        self._expect(client_id)
        self._uploading.add(client_id)
        ok = False  # a refused update is the client's fault unless it was only too old
        try:
            stager.check_header(self._manifest, header)
            self._staleness(header.base_model_id)  # refuse a too-old base before the upload takes a slot
            spool = WeightedMean.reads_spooled
            async with stager.staged(self._uploads, self._manifest, header, chunks, spool=spool) as arrays:
                base = await self._base(header.base_model_id)
                async with self._lock:
                    if self._closed:
                        raise FailedPrecondition(f"async session {self.session_id!r} ended during the upload")
                    staleness = self._staleness(header.base_model_id)  # the version may have moved on meanwhile
                    scale = staleness_weight(staleness, self.plan.staleness_exponent)
                    buffer = self._buffer
                    fold = functools.partial(buffer.mean.add, arrays, header.num_examples, base=base, scale=scale)
                    await asyncio.to_thread(fold) if is_big(header) else fold()
                    # staleness first, so it is kept however many names the client sent (and is never theirs)
                    metrics = {"staleness": staleness, **header.metrics} | {"staleness": staleness}
                    buffer.metrics.add(metrics, header.num_examples)
                    buffer.accepted.append(client_id)
                    self._tally.accept()
                    count = buffer.mean.count
                    if count >= max(1, self.plan.buffer_size) and len(self._sealed) < _MAX_SEALED:
                        self._seal()
            del arrays, base
            await stager.trim_after(header)
            ok = True
        except _Stale:
            ok = True  # not the client's fault: its next task, on the newest version, goes out at once
            raise
        except UPDATE_FAULTS as exc:
            self._tally.reject(client_id, exc)
            logger.warning("rejected update from client %s (async %s): %s", client_id, self.session_id, exc.message)
            raise
        finally:
            self._uploading.discard(client_id)
            self._uploads.release(client_id)  # a grant (RequestUpload) of an update refused before it was staged
            self._trainers.release(client_id, ok)
        return count

    async def _base(self, model_id: str) -> NamedArrays:
        """The version an update was trained on, decoded. The last two are kept: most updates in a burst
        share a base, and a large model is otherwise read from the store once per update."""
        base = self._bases.get(model_id)
        if base is None:
            deadline = self._ctx.clock.now() + self.plan.timeout_s  # the client's update waits, not the round
            base = await self._ctx.models.model_arrays(model_id, deadline=deadline)
            self._bases[model_id] = base
            while len(self._bases) > _BASES_KEPT:
                self._bases.popitem(last=False)
        self._bases.move_to_end(model_id)
        return base

    def _staleness(self, base_model_id: str) -> int:
        base_version = self._versions.get(base_model_id)
        if base_version is None:
            self._num_stale += 1
            raise _Stale(
                f"update trained on {base_model_id!r}, which is not a recent global model of async session "
                f"{self.session_id!r}"
            )
        staleness = max(0, self.version - base_version)
        limit = self.plan.max_staleness
        if limit and staleness > limit:
            self._num_stale += 1
            raise _Stale(
                f"update is {staleness} versions stale; session {self.session_id!r} drops updates older than {limit}"
            )
        return staleness

    # -- flushes -------------------------------------------------------------------

    def _seal(self) -> None:
        """The open buffer is full: set it aside for the next flush, so each partial holds exactly K."""
        self._sealed.append(self._buffer)
        self._buffer = _FlushBuffer(WeightedMean(self._manifest))
        self._full.set()

    async def result(self, plan: RoundPlan) -> RoundResult:
        """The flush ``plan`` asks for: wait for a full buffer (or the plan's timeout: then the open one),
        and store it as one partial under ``plan.round_id``."""
        clock = self._ctx.clock
        self._calls += 1
        try:
            called_at = clock.now()
            deadline = called_at + plan.timeout_s
            while not self._closed and not self._sealed:
                remaining = deadline - clock.now()
                if remaining <= 0:
                    break
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    await clock.wait_for(self._full.wait(), remaining)
            async with self._lock:
                if not self._sealed:  # the timeout: whatever the open buffer has
                    self._seal()
                done = self._sealed.popleft()
                if self._buffer.mean.count >= max(1, self.plan.buffer_size) and len(self._sealed) < _MAX_SEALED:
                    self._seal()  # it overflowed while the sealed ones waited
                tally = self._tally.take()
                stale, self._num_stale = self._num_stale, 0
                if not self._sealed:
                    self._full.clear()
            if stale:
                tally.failures.setdefault("", f"{stale} updates dropped as too stale")
            result = await store_result(
                self._ctx,
                plan.round_id,
                None if self._closed else done.mean,  # once the session is over, its last updates are not wanted
                num_selected=len(set(done.accepted) | tally.failures.keys() - {""}),
                tally=tally,
                metrics=done.metrics,
                client_ids=done.accepted,
                deadline=self._ctx.store_deadline(called_at, plan.timeout_s),
            )
            logger.info(
                "async session %s on %s: flush of %d updates (version %d), %d rejected, %d stale, %d training",
                self.session_id,
                self._ctx.combiner_id,
                result.num_updates,
                self.version,
                result.num_rejected,
                stale,
                len(self._trainers),
            )
            return result
        finally:
            self._calls -= 1
            self._last_call = clock.now()

    # -- the end -------------------------------------------------------------------

    def close(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self._full.set()
        self._trainers.close()
        self._uploads.close()
        if self._watchdog is not None and self._watchdog is not asyncio.current_task():
            self._watchdog.cancel()
        logger.info("async session %s ended on %s: %s", self.session_id, self._ctx.combiner_id, reason)

    async def wait_closed(self) -> None:
        """Nothing outlives :meth:`close`: a flush in progress stores nothing once the run is closed."""

    async def _expire(self) -> None:
        """End the run if no flush has waited on it for ``lease_s`` (the reducer is gone)."""
        clock = self._ctx.clock
        while not self._closed:
            await clock.sleep(min(1.0, self._lease_s / 4))
            if self._calls == 0 and clock.now() - self._last_call > self._lease_s:
                self.close(f"no call from the reducer for {self._lease_s:g}s")
