"""Asynchronous (FedBuff) sessions in the simulator, on a modelled clock.

A task takes ``task_time_s * slowdown`` modelled seconds, so when each client finishes, and on
which global version it started, follows from the schedule alone. The driver plays the schedule
forward until some combiner group has ``buffer_size`` updates: every task that finishes before that
moment started on a version that exists already, so all of them are trained in one parallel batch
per base version. Each update is folded, as in a deployment, as its delta from its base scaled by
``(1+s)^-exponent`` (``fedn.aggregation``), the full group buffer is merged by the reducer's code,
and the next window starts. Memory: one float64 buffer per group and the base versions still in use.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fedn.aggregation import (
    WeightedMean,
    add_delta,
    cast_like,
    merge_metric_summaries,
    partial_manifest,
    staleness_weight,
)
from fedn.codec import NamedArrays, encode_payload, manifest_of
from fedn.errors import FednError
from fedn.records import MetricSummary
from fedn.sampling import sample_seed, sample_size, select_clients

if TYPE_CHECKING:
    from fedn.sim.engine import RoundMetrics, Simulation, _Pool

__all__ = ["run_buffered"]

_MAX_EMPTY_WINDOWS = 3
_MAX_IDLE_TASKS_PER_CLIENT = 100


@dataclass(order=True)
class _InFlight:
    finish: float
    seq: int
    client: int = field(compare=False)
    base: int = field(compare=False)  # the version it trains on


@dataclass
class _Buffer:
    """One combiner group's buffer: the running sum of scaled deltas, its update count and metrics."""

    manifest: list
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
    """Who trains when, on which version: the clock, the in-flight tasks and the clients waiting a turn."""

    def __init__(self, sim: Simulation) -> None:
        spec = sim.spec
        self.sim = sim
        self.task_s = spec.heterogeneity.task_time_s or 1.0
        everyone = list(range(spec.clients))
        cap = sample_size(spec.clients, spec.fraction, spec.min_clients) if spec.fraction < 1 else spec.clients
        first = select_clients(everyone, cap, sample_seed(spec.seed, 0))
        chosen = set(first)
        self.waiting = deque(c for c in everyone if c not in chosen)  # take turns, in order
        self.heap: list[_InFlight] = []
        self.seq = 0
        self.tasks_of = np.zeros(spec.clients, dtype=np.int64)
        self.now = 0.0
        for client in first:
            self.start(client, 0)

    def start(self, client: int, version: int) -> None:
        self.seq += 1
        duration = self.task_s * float(self.sim.slowdown[client])
        heapq.heappush(self.heap, _InFlight(self.now + duration, self.seq, client, version))

    def drops_out(self, client: int) -> bool:
        n = int(self.tasks_of[client])
        self.tasks_of[client] += 1
        if self.sim.dropout[client] <= 0:
            return False
        draw = np.random.default_rng([self.sim.spec.seed, client, n, 3]).random()
        return bool(draw < self.sim.dropout[client])

    def next_done(self, version: int) -> tuple[_InFlight, bool]:
        """Advance to the next finished task, restart its slot on ``version``; (task, dropped out)."""
        task = heapq.heappop(self.heap)
        self.now = task.finish
        dropped = self.drops_out(task.client)
        if self.waiting:
            self.waiting.append(task.client)
            self.start(self.waiting.popleft(), version)
        else:
            self.start(task.client, version)
        return task, dropped

    def bases_in_use(self) -> set[int]:
        return {t.base for t in self.heap}


def run_buffered(
    sim: Simulation,
    pool: _Pool,
    model_map: np.ndarray,
    global_arrays: NamedArrays,
    evaluate: Callable[[NamedArrays, int], dict[str, float]] | None,
    rss: Any,
    on_round: Callable[[RoundMetrics], None] | None,
    on_progress: Callable[[int, int], None] | None,
    workers: int,
) -> tuple[list[RoundMetrics], NamedArrays, list[tuple[int, int, str]]]:
    spec = sim.spec
    manifest = manifest_of(global_arrays)
    limit = max(1, spec.buffer_size)
    versions: dict[int, NamedArrays] = {0: global_arrays}
    buffers = {g: _Buffer(manifest) for g in range(spec.combiners)}
    pending = dict.fromkeys(range(spec.combiners), 0)  # scheduled into the buffer, not yet trained
    schedule = _Schedule(sim)
    rounds: list[RoundMetrics] = []
    failures: list[tuple[int, int, str]] = []
    version, empty_windows, last_time = 0, 0, 0.0
    dropped = stale = 0
    while version < spec.rounds:
        t0 = time.perf_counter()
        window: list[_Done] = []
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
        config = {**spec.config, **sim.optimizer.client_config()}
        failed = _train(sim, pool, model_map, versions, window, buffers, config, version, workers, on_progress)
        failures.extend(f for f in failed if len(failures) < 20)
        pending = dict.fromkeys(range(spec.combiners), 0)
        if len(failed) == len(window):
            empty_windows += 1
            if empty_windows >= _MAX_EMPTY_WINDOWS:
                raise FednError(f"no client produced an update; first error: {failures[0][2]}")
        else:
            empty_windows = 0
        if buffers[full].count < limit:  # some of its updates failed: the buffer fills on
            continue
        done = buffers.pop(full)
        buffers[full] = _Buffer(manifest)
        delta = done.mean.finish()
        summary = merge_metric_summaries(done.summaries)
        current = versions[version]
        new_global = cast_like(sim.optimizer.step(current, add_delta(current, delta.arrays)), current)
        version += 1
        versions[version] = new_global
        for old in [v for v in versions if v != version and v not in schedule.bases_in_use()]:
            del versions[old]
        row: RoundMetrics = {
            "round": version,
            "group": full,
            "selected": done.count,
            "updates": done.count,
            "dropped": dropped,
            "stale": stale,
            "failed": len(failed),
            "stragglers": 0,
            "status": "done",
            "modelled_time_s": schedule.now,
            "modelled_s": schedule.now - last_time,
        }
        dropped = stale = 0
        last_time = schedule.now
        if "train_loss" in summary:
            row["train_loss"] = summary["train_loss"].mean
        if "staleness" in summary:
            row["staleness_mean"], row["staleness_max"] = summary["staleness"].mean, summary["staleness"].max
        if evaluate is not None and (version % spec.eval_every == 0 or version == spec.rounds):
            row.update(evaluate(new_global, version))
        row["wall_s"] = time.perf_counter() - t0
        row["rss_mb"] = rss.current_mb()
        rounds.append(row)
        if on_round is not None:
            on_round(row)
    return rounds, versions[version], failures


def _train(
    sim: Simulation,
    pool: _Pool,
    model_map: np.ndarray,
    versions: dict[int, NamedArrays],
    window: list[_Done],
    buffers: dict[int, _Buffer],
    config: dict,
    version: int,
    workers: int,
    on_progress: Callable[[int, int], None] | None,
) -> list[tuple[int, int, str]]:
    """Train the window's tasks, one parallel batch per base version, and fold them into the group
    buffers; returns (version, client, error) per failed task."""
    failed: list[tuple[int, int, str]] = []
    exponent = sim.spec.staleness_exponent
    manifest = manifest_of(versions[version])
    for base in sorted({d.base for d in window}):
        tasks = [
            (d.client, d.group, float(sim.slowdown[d.client]), staleness_weight(d.staleness, exponent), d.staleness)
            for d in window
            if d.base == base
        ]
        _, payload = encode_payload(versions[base])
        model_map[: len(payload)] = np.frombuffer(payload, dtype=np.uint8)
        replies = pool.run_round(base + 1, config, sim.deal(tasks, workers), on_progress)
        for rep in replies:
            failed.extend((version + 1, cid, err) for cid, err in rep["failures"])
        partials, summaries = sim.group_partials(replies, manifest, pool)
        for group, partial in partials.items():
            buffer = buffers[group]
            buffer.mean.add(partial.arrays, partial.total_weight)  # adds Σn · (Σ n·s·Δ / Σn)
            buffer.count += partial.count
            buffer.summaries.extend(summaries[group])
    return failed
