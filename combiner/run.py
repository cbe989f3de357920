"""What a sync round and an async run share: the interface the router calls, and the pieces both use.

The router sends every call for a round id to the one run that owns it; a run never calls back into
the router. It is given what it needs (:class:`RunContext`) and returns values.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from combiner.clients import ClientHub
from combiner.model_cache import ModelCache
from combiner.staging import UploadStager
from combiner.stragglers import Stragglers
from fedn.aggregation import Aggregator, MetricsAccumulator
from fedn.clock import Clock
from fedn.codec import check_finite, encode_model_chunks
from fedn.errors import FednError, InvalidArgument, NonFiniteValues, PayloadTooLarge, StoreError
from fedn.ids import printable
from fedn.metrics import CombinerMetrics, reject_reason
from fedn.models import partial_key, partial_metadata
from fedn.records import ClientFailureRecord, MetricSummary, RoundPlan, RoundResult
from fedn.retry import retry
from fedn.wire import TaskInfo, UpdateHeaderInfo
from fedn.wire_limits import MAX_METRICS

__all__ = [
    "UPDATE_FAULTS",
    "RoundMetrics",
    "Run",
    "RunContext",
    "Tally",
    "failure_text",
    "store_result",
    "train_task",
]

logger = logging.getLogger(__name__)

_FAILURE_TEXT_CHARS = 2000

# What an update is refused for by its own fault: final for the client's answer, counted as rejected.
UPDATE_FAULTS: tuple[type[FednError], ...] = (InvalidArgument, PayloadTooLarge)


class Run(Protocol):
    """One sync round or one async run at this combiner, as the router sees it.

    Every method that takes a client id raises FailedPrecondition (the run is closed, or the client
    has no task in it) or Conflict (it already answered or is uploading) when the call does not fit.
    """

    @property
    def run_id(self) -> str:
        """The round id its tasks carry and clients echo."""
        ...

    @property
    def closed(self) -> bool: ...

    def admit(self, client_id: str) -> tuple[bool, int]:
        """May ``client_id`` upload now? (granted, clients queued before it); if not, it is told later."""
        ...

    async def receive(self, header: UpdateHeaderInfo, chunks: AsyncIterator[bytes]) -> int:
        """Stage, check and fold one update; returns how many the run (or its open buffer) holds now."""
        ...

    def report_failure(self, client_id: str, error: str) -> None: ...

    def client_connected(self, client_id: str, replaced: bool) -> None:
        """A task stream opened; ``replaced`` if it replaced an older stream of the same client."""
        ...

    def client_left(self, client_id: str) -> None: ...

    def downloaded(self, model_id: str, client_id: str) -> None:
        """``client_id`` has the whole of ``model_id``: its train-task grant is used."""
        ...

    async def result(self, plan: RoundPlan) -> RoundResult:
        """A sync round's result once it ends; an async run's next flush (``plan`` names it)."""
        ...

    def close(self, reason: str) -> None:
        """Stop taking updates and end as soon as possible; idempotent."""
        ...

    async def wait_closed(self) -> None:
        """Return once the run has ended and stored what it will store."""
        ...


@dataclass(frozen=True)
class RunContext:
    """What a run is given: the combiner's clients, models, upload staging and clock, who is on back-off
    for missing a deadline, and how long past a round's deadline the model store is retried."""

    combiner_id: str
    clients: ClientHub
    models: ModelCache
    stager: UploadStager
    clock: Clock
    stragglers: Stragglers = field(default_factory=Stragglers)
    store_retry_grace_s: float = 7.5
    metrics: CombinerMetrics = field(default_factory=CombinerMetrics)

    def store_deadline(self, started_at: float, timeout_s: float) -> float:
        """Until when a run that began at ``started_at`` retries the model store: its deadline plus the
        grace, which stays under the reducer's RPC grace so the answer reaches the reducer in time."""
        return started_at + timeout_s + self.store_retry_grace_s


def failure_text(error: str) -> str:
    """A client's own account of its failure, bounded and on one printable line: it ends up in the round
    record and in the log, so a client cannot flood either, or forge log lines with line breaks."""
    text = printable((error or "unspecified error")[:_FAILURE_TEXT_CHARS])
    return text if len(text) <= _FAILURE_TEXT_CHARS else text[: _FAILURE_TEXT_CHARS - 3] + "..."


def train_task(run_id: str, plan: RoundPlan, model_id: str, round_index: int) -> TaskInfo:
    return TaskInfo("train", run_id, plan.session_id, model_id, round_index, plan.timeout_s, plan.config)


class RoundMetrics(MetricsAccumulator):
    """A run's metrics as the reducer will accept them (fedn.wire_limits): each update may bring 64 names,
    but clients may each bring others, so names past the first ``MAX_METRICS`` of the run are left out;
    and a name whose weighted sum overflowed is left out of the summary, not reported as inf."""

    def __init__(self, max_names: int = MAX_METRICS) -> None:
        super().__init__()
        self._names: set[str] = set()
        self._max_names = max_names
        self._left_out = False

    def add(self, metrics: Mapping[str, float], weight: float) -> None:
        kept = {}
        for name, value in metrics.items():
            if name not in self._names and len(self._names) >= self._max_names:
                if not self._left_out:
                    logger.warning(
                        "more than %d metric names in one run: %r and later new names are left out",
                        self._max_names,
                        name,
                    )
                self._left_out = True
                continue
            self._names.add(name)
            kept[name] = value
        super().add(kept, weight)

    def summary(self) -> dict[str, MetricSummary]:
        return {
            name: s for name, s in super().summary().items() if all(math.isfinite(v) for v in (s.mean, s.min, s.max))
        }


@dataclass(eq=False)
class Tally:
    """Clients that failed (and why) and updates refused (and the fixed reason of each), until the next
    result takes them; ``started_at`` (the real clock, a measurement) is when the run or flush began.
    With ``metrics`` (a training run's), each update folded or refused is counted there as it happens."""

    failures: dict[str, str] = field(default_factory=dict)
    num_rejected: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    started_at: float = field(default_factory=time.monotonic)
    metrics: CombinerMetrics | None = None

    def accept(self) -> None:
        """An update was folded."""
        if self.metrics is not None:
            self.metrics.updates_accepted.inc()

    def fail(self, client_id: str, error: str) -> None:
        self.failures[client_id] = error

    def reject(self, client_id: str, exc: FednError) -> None:
        """Count an update refused by its own fault (one of ``UPDATE_FAULTS``) against its client."""
        reason = reject_reason(exc)
        self.num_rejected += 1
        self.rejected[reason] += 1
        self.failures[client_id] = f"update rejected: {exc.message}"
        if self.metrics is not None:
            self.metrics.updates_rejected.labels(reason).inc()

    def take(self) -> Tally:
        """This tally, leaving an empty one (started now) in its place."""
        taken = Tally(self.failures, self.num_rejected, self.rejected, self.started_at, self.metrics)
        self.failures, self.num_rejected, self.rejected, self.started_at = {}, 0, Counter(), time.monotonic()
        return taken


async def store_result(
    ctx: RunContext,
    round_id: str,
    aggregator: Aggregator | None,
    *,
    num_selected: int,
    tally: Tally,
    metrics: MetricsAccumulator,
    client_ids: list[str],
    deadline: float,
    uplink_bytes: int = 0,
) -> RoundResult:
    """Store the aggregate as this combiner's partial of ``round_id`` and describe it.

    ``aggregator=None`` (or one with nothing folded) stores nothing: the result has no partial. A store
    error is retried until ``deadline`` (on ``ctx.clock``); past it, the result has no partial and lists
    the clients whose updates were lost with it, so the reducer records them instead of waiting.
    ``uplink_bytes`` (the payload bytes of the updates folded, as sent) is reported with the partial.
    """
    count = aggregator.count if aggregator is not None else 0
    ctx.metrics.round_seconds.observe(max(0.0, time.monotonic() - tally.started_at))
    key, total_weight = "", 0.0
    if count:
        # the round is over: a mean computed in place of the running sums saves a model copy
        partial = await asyncio.to_thread(aggregator.finish)
        problem = await asyncio.to_thread(_not_finite, partial.arrays, partial.total_weight)
        if problem:
            # each update was finite, but their weighted sum overflowed: a partial of inf/NaN would poison
            # the global model, so none is stored and the round's result says why
            logger.error("round %s: the aggregate is not finite (%s); no partial stored", round_id, problem)
            for client_id in client_ids:
                tally.fail(client_id, f"update lost: the combiner's aggregate is not finite ({problem})")
            return _describe(ctx, round_id, "", 0.0, 0, num_selected, tally, metrics, [])
        key = partial_key(round_id, ctx.combiner_id)
        # the result goes into the partial's header, so the partial is usable without this reply: by this
        # combiner asked again after a restart, or by a reducer whose combiner did not come back
        described = _describe(
            ctx, round_id, key, partial.total_weight, count, num_selected, tally, metrics, client_ids, uplink_bytes
        )
        metadata = partial_metadata(described)
        store = ctx.models.store
        try:
            await retry(
                lambda: asyncio.to_thread(store.put, key, encode_model_chunks(partial.arrays, metadata)),
                deadline=deadline,
                clock=ctx.clock,
                what=f"storing the partial of round {round_id}",
            )
        except StoreError as exc:
            lost = f"update lost: the partial could not be stored before the deadline: {failure_text(exc.message)}"
            for client_id in client_ids:
                tally.fail(client_id, lost)
            key, count, client_ids = "", 0, []
        else:
            total_weight = partial.total_weight
        del partial
    return _describe(
        ctx, round_id, key, total_weight, count, num_selected, tally, metrics, client_ids, uplink_bytes if key else 0
    )


def _not_finite(arrays: Mapping, total_weight: float) -> str:
    """Why the partial is unusable ("" if it is fine)."""
    if not math.isfinite(total_weight):
        return f"total weight {total_weight}"
    try:
        for name, array in arrays.items():
            check_finite(name, array)
    except NonFiniteValues as exc:
        return exc.message
    return ""


def _describe(
    ctx: RunContext,
    round_id: str,
    key: str,
    total_weight: float,
    count: int,
    num_selected: int,
    tally: Tally,
    metrics: MetricsAccumulator,
    client_ids: list[str],
    uplink_bytes: int = 0,
) -> RoundResult:
    return RoundResult(
        round_id=round_id,
        combiner_id=ctx.combiner_id,
        partial_key=key,
        total_weight=total_weight,
        num_selected=num_selected,
        num_updates=count,
        num_rejected=tally.num_rejected,
        failures=[
            ClientFailureRecord(client_id=c, combiner_id=ctx.combiner_id, error=e)
            for c, e in sorted(tally.failures.items())
        ],
        metrics=metrics.summary() if count else {},
        client_ids=list(client_ids) if count else [],
        uplink_bytes=uplink_bytes if count else 0,
    )
