"""Asynchronous (FedBuff) runs in the simulator, on a modelled clock: each flush makes a new version.

A task takes ``task_time_s * slowdown`` modelled seconds, so when each client finishes, and on
which global version it started, follows from the schedule alone. The run plays the schedule
forward until some combiner group has ``buffer_size`` updates: every task that finishes before that
moment started on a version that exists already, so all of them are trained in one parallel batch
per base version. Each update is folded, as in a deployment, as its delta from its base scaled by
``(1+s)^-exponent`` (``fedn.aggregation``); the full group buffer is flushed through the reducer's
code into the next version, and the next window starts. Memory: one float64 buffer per group and
the base versions still in use. The final version is evaluated on the clients, as a deployment's async
session evaluates its final model (:func:`fedn.sim.evaluation.evaluate_on_sample`), outside the
modelled clock; the central evaluation (``eval_args``) follows ``eval_every``.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from fedn.aggregation import (
    WeightedMean,
    add_delta,
    cast_like,
    merge_metric_summaries,
    partial_manifest,
    staleness_weight,
)
from fedn.codec import NamedArrays, TensorSpec, manifest_of
from fedn.errors import FednError
from fedn.records import MetricSummary
from fedn.sampling import sample_seed, sample_size, select_clients
from fedn.sim.context import RunContext
from fedn.sim.evaluation import evaluate_on_sample
from fedn.sim.results import RoundMetrics

__all__ = ["run_async"]

_MAX_EMPTY_WINDOWS = 3
_MAX_IDLE_TASKS_PER_CLIENT = 100


@dataclass(order=True)
class _InFlight:
    finish: float
    seq: int
    client: int = field(compare=False)
    base: int = field(compare=False)  # the version it trains on


@dataclass
class _GroupBuffer:
    """One combiner group's FedBuff buffer: the running sum of scaled deltas, its update count and metrics."""

    manifest: list[TensorSpec]
    mean: WeightedMean = field(init=False)
    count: int = 0
    summaries: list[tuple[dict[str, MetricSummary], float]] = field(default_factory=list)

    def __post_init__(self) -> None:  # it sums worker partials, which are float64
        self.mean = WeightedMean(partial_manifest(self.manifest))


@dataclass
class _Done:
    client: int
    group: int
    base: int
    staleness: int


class _Schedule:
    """Who trains when, on which version: the clock, the in-flight tasks and the clients waiting a turn.

    The clients waiting a turn are those never started, in order, then those that finished, in the
    order they finished; the first kind is a cursor over the ids, not a list, so declaring a million
    clients costs only the ones that have run.
    """

    def __init__(self, ctx: RunContext) -> None:
        spec = ctx.spec
        self.ctx = ctx
        self.task_s = spec.heterogeneity.task_time_s or 1.0
        cap = sample_size(spec.clients, spec.fraction, spec.min_clients) if spec.fraction < 1 else spec.clients
        first = select_clients(range(spec.clients), cap, sample_seed(spec.seed, 0))
        chosen = set(first)
        self._never_started = (c for c in range(spec.clients) if c not in chosen)  # take turns, in order
        self._never_started_left = spec.clients - len(first)
        self._finished: deque[int] = deque()
        self.heap: list[_InFlight] = []
        self.seq = 0
        self.tasks_of: dict[int, int] = {}  # tasks finished per client, for its dropout draws
        self.now = 0.0
        for client in first:
            self.start(client, 0)

    def start(self, client: int, version: int) -> None:
        self.seq += 1
        duration = self.task_s * float(self.ctx.slowdown[client])
        heapq.heappush(self.heap, _InFlight(self.now + duration, self.seq, client, version))

    def drops_out(self, client: int) -> bool:
        if self.ctx.dropout[client] <= 0:
            return False
        n = self.tasks_of.get(client, 0)
        self.tasks_of[client] = n + 1
        draw = np.random.default_rng([self.ctx.spec.seed, client, n, 3]).random()
        return bool(draw < self.ctx.dropout[client])

    def next_done(self, version: int) -> tuple[_InFlight, bool]:
        """Advance to the next finished task, restart its slot on ``version``; (task, dropped out)."""
        task = heapq.heappop(self.heap)
        self.now = task.finish
        dropped = self.drops_out(task.client)
        if self._never_started_left:
            self._finished.append(task.client)
            self._never_started_left -= 1
            self.start(next(self._never_started), version)
        elif self._finished:
            self._finished.append(task.client)
            self.start(self._finished.popleft(), version)
        else:
            self.start(task.client, version)
        return task, dropped

    def bases_in_use(self) -> set[int]:
        return {t.base for t in self.heap}


def run_async(ctx: RunContext, model: NamedArrays) -> NamedArrays:
    """Flush group buffers into ``spec.rounds`` versions after ``model`` (version 0), one row each into
    ``ctx.log``; returns the last version.

    FednError when every client drops out, or when no client produced an update in three windows running.
    """
    spec = ctx.spec
    manifest = manifest_of(model)
    limit = max(1, spec.buffer_size)
    versions: dict[int, NamedArrays] = {0: model}
    buffers = {g: _GroupBuffer(manifest) for g in range(spec.combiners)}
    schedule = _Schedule(ctx)
    version, empty_windows, last_flush_s = 0, 0, 0.0
    dropped = stale = 0  # since the last flush
    while version < spec.rounds:
        started = time.perf_counter()
        window: list[_Done] = []
        pending = dict.fromkeys(range(spec.combiners), 0)  # scheduled into a buffer, not yet trained
        full = None
        idle = 0  # finished tasks in a row that brought no update
        while full is None:  # play the schedule to the moment a group's buffer is full
            task, gone = schedule.next_done(version)
            if gone:
                dropped += 1
                idle += 1
                if idle > _MAX_IDLE_TASKS_PER_CLIENT * spec.clients:
                    raise FednError(f"no update in {idle} finished tasks: every client drops out (--dropout)")
                continue
            staleness = version - task.base
            if spec.max_staleness and staleness > spec.max_staleness:
                stale += 1
                continue
            group = task.client % spec.combiners
            idle = 0
            window.append(_Done(task.client, group, task.base, staleness))
            pending[group] += 1
            if buffers[group].count + pending[group] >= limit:
                full = group
        failed = _train_window(ctx, versions, window, buffers)
        ctx.log.add_failures(version + 1, failed)
        if len(failed) == len(window):
            empty_windows += 1
            if empty_windows >= _MAX_EMPTY_WINDOWS:
                raise FednError(f"no client produced an update; first error: {ctx.log.failures[0][2]}")
        else:
            empty_windows = 0
        if buffers[full].count < limit:  # some of its updates failed: the buffer fills on
            continue
        flushed = buffers.pop(full)
        buffers[full] = _GroupBuffer(manifest)
        delta = flushed.mean.finish()
        summary = merge_metric_summaries(flushed.summaries)
        current = versions[version]
        new_model = cast_like(ctx.optimizer.step(current, add_delta(current, delta.arrays)), current)
        version += 1
        versions[version] = new_model
        for old in [v for v in versions if v != version and v not in schedule.bases_in_use()]:
            del versions[old]
        row: RoundMetrics = {
            "round": version,  # the column is "round" in sync and async output alike
            "group": full,
            "selected": flushed.count,
            "updates": flushed.count,
            "dropped": dropped,
            "stale": stale,
            "failed": len(failed),
            "stragglers": 0,
            "status": "done",
            "modelled_time_s": schedule.now,
            "modelled_s": schedule.now - last_flush_s,
        }
        dropped = stale = 0
        last_flush_s = schedule.now
        if "train_loss" in summary:
            row["train_loss"] = summary["train_loss"].mean
        if "staleness" in summary:
            row["staleness_mean"], row["staleness_max"] = summary["staleness"].mean, summary["staleness"].max
        if spec.federated_eval and version == spec.rounds:  # as a deployment's async session: the final model
            row.update(evaluate_on_sample(ctx, new_model, version))
        ctx.log.record(row, new_model, started=started)
    return versions[version]


def _train_window(
    ctx: RunContext, versions: dict[int, NamedArrays], window: list[_Done], buffers: dict[int, _GroupBuffer]
) -> list[tuple[int, str]]:
    """Train the window's tasks, one parallel batch per base version, and fold them into the group
    buffers; returns (client, error) per failed task."""
    failed: list[tuple[int, str]] = []
    exponent = ctx.spec.staleness_exponent
    config = ctx.client_config()
    for base in sorted({d.base for d in window}):
        tasks = [
            (d.client, d.group, float(ctx.slowdown[d.client]), staleness_weight(d.staleness, exponent), d.staleness)
            for d in window
            if d.base == base
        ]
        ctx.pool.publish(versions[base])
        # the "round" a client's config gets: the version after the one it trains on
        batch = ctx.pool.train(tasks, round_index=base + 1, config=config, on_progress=ctx.on_progress)
        failed.extend(batch.failures)
        for group, partial in batch.partials.items():
            buffer = buffers[group]
            buffer.mean.add(partial.arrays, partial.total_weight)  # adds Σn · (Σ n·s·Δ / Σn)
            buffer.count += partial.count
            buffer.summaries.extend(batch.summaries[group])
    return failed
