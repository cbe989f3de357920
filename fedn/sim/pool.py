"""The simulator's worker processes and the shared memory they read the model from and write partials to.

The driver publishes the model once per batch into one memory map that every worker reads, deals the
batch's tasks over the workers, and reads back one float64 partial per worker and combiner group
from each worker's result map. Sync rounds and async flushes both train through this pool, and
federated evaluations run through it the same way (each client's figures come back in the reply).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from types import TracebackType

import numpy as np

from fedn.aggregation import Partial, merge_partials
from fedn.codec import NamedArrays, TensorSpec, encode_payload, payload_bytes
from fedn.errors import FednError, InvalidArgument
from fedn.records import MetricSummary
from fedn.sim.spec import SimulationSpec
from fedn.sim.worker import Task, flat_size, model_path, progress_path, result_path

__all__ = [
    "MAX_LOCAL_WORKERS",
    "EvalBatch",
    "TrainBatch",
    "WorkerPool",
    "collect_eval_batch",
    "collect_train_batch",
    "deal_tasks",
]

_START_TIMEOUT_S = 300.0
# a process each: past this, a typo (--workers 100000000000) would fork until the machine gives out
MAX_LOCAL_WORKERS = 1024
_WORKER_MAIN = "from fedn.sim.worker import main; main()"

# (metric summaries, total weight) of one worker's share of a group, as MetricsAccumulator summarised them
GroupSummaries = list[tuple[dict[str, MetricSummary], float]]


@dataclass
class TrainBatch:
    """What one batch of tasks produced, merged per combiner group in worker order.

    ``partials`` are each group's combiner partial; ``failures`` are (client, error) in worker order.
    """

    partials: dict[int, Partial] = field(default_factory=dict)
    summaries: dict[int, GroupSummaries] = field(default_factory=dict)
    failures: list[tuple[int, str]] = field(default_factory=list)
    stragglers: int = 0
    slowest_s: float = 0.0  # the modelled time of the slowest update that made the deadline
    # traffic: bytes of the updates sent (compressed, or raw), how many, and of the models received
    uplink_bytes: int = 0
    uploads: int = 0
    downlink_bytes: int = 0


@dataclass
class EvalBatch:
    """What one batch of evaluate tasks produced, in worker order: each client's own
    (client, group, loss, num_examples, metrics), and the (client, error) failures."""

    evaluations: list[tuple[int, int, float, float, dict[str, float]]] = field(default_factory=list)
    failures: list[tuple[int, str]] = field(default_factory=list)


def deal_tasks(tasks: list[Task], workers: int, *, mergeable: bool) -> list[list[Task]]:
    """Split tasks over workers: by position when the rule merges by weight, else whole groups per worker,
    since a median or Krum needs every update of a group in one place."""
    if mergeable:
        return [tasks[w::workers] for w in range(workers)]
    out: list[list[Task]] = [[] for _ in range(workers)]
    for task in tasks:
        out[task[1] % workers].append(task)
    return out


def collect_train_batch(
    replies: list[dict], rows: list[dict[int, np.ndarray]], manifest: list[TensorSpec], combiners: int
) -> TrainBatch:
    """Merge the workers' replies and flat float64 partial ``rows`` (per worker, per group) into a batch.

    Summed per group in worker order whatever the pool, so every pool gives bit-identical partials.
    """
    batch = TrainBatch(
        stragglers=sum(rep["stragglers"] for rep in replies),
        slowest_s=max((rep["slowest_s"] for rep in replies), default=0.0),
        uplink_bytes=sum(rep.get("uplink_bytes", 0) for rep in replies),
        uploads=sum(rep.get("uploads", 0) for rep in replies),
        downlink_bytes=sum(rep.get("downlink_bytes", 0) for rep in replies),
    )
    for rep in replies:
        batch.failures.extend((cid, err) for cid, err in rep["failures"])
    for group in range(combiners):
        parts = []
        for w, rep in enumerate(replies):
            info = rep["groups"].get(group)
            if info is not None:
                arrays = _split_row(rows[w][group], manifest)
                parts.append(Partial(arrays=arrays, total_weight=info["weight"], count=info["count"]))
                batch.summaries.setdefault(group, []).append(
                    ({k: MetricSummary(**v) for k, v in info["metrics"].items()}, info["weight"])
                )
        if parts:
            batch.partials[group] = merge_partials(parts)
    return batch


def collect_eval_batch(replies: list[dict]) -> EvalBatch:
    """The workers' evaluation replies in worker order."""
    batch = EvalBatch()
    for rep in replies:
        batch.failures.extend((cid, err) for cid, err in rep["failures"])
        batch.evaluations.extend((c, g, loss, n, m) for c, g, loss, n, m in rep["evaluations"])
    return batch


def _split_row(row: np.ndarray, manifest: list[TensorSpec]) -> NamedArrays:
    out, offset = {}, 0
    for spec in manifest:
        out[spec.name] = row[offset : offset + spec.size].reshape(spec.shape)
        offset += spec.size
    return out


class WorkerPool:
    """Worker subprocesses, a socket pair each, the shared model map, and a progress counter per worker.

    Use as a context manager: entering starts the workers (and stops them again if one cannot start).
    """

    def __init__(
        self, *, workdir: Path, spec: SimulationSpec, manifest: list[TensorSpec], workers: int, mergeable: bool
    ) -> None:
        if workers > MAX_LOCAL_WORKERS:
            raise InvalidArgument(
                f"{workers} worker processes is more than the {MAX_LOCAL_WORKERS} one machine runs here; "
                "use --workers auto (one per core) or --backend ray"
            )
        self.workdir, self.spec, self.manifest = workdir, spec, manifest
        self.workers = workers
        self.mergeable = mergeable
        self._procs: list[subprocess.Popen] = []
        self._conns: list[Connection] = []
        self._results: list[np.memmap] = []
        self._model: np.memmap | None = None
        self._progress: np.memmap | None = None

    def __enter__(self) -> WorkerPool:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def start(self) -> None:
        spec, workdir, size = self.spec, self.workdir, flat_size(self.manifest)
        self._model = np.memmap(
            model_path(workdir), dtype=np.uint8, mode="w+", shape=(max(payload_bytes(self.manifest), 1),)
        )
        for w in range(self.workers):
            np.memmap(result_path(workdir, w), dtype=np.float64, mode="w+", shape=(spec.combiners, size)).flush()
        self._progress = np.memmap(progress_path(workdir), dtype=np.int64, mode="w+", shape=(max(self.workers, 1),))
        setup = {"spec": spec.model_dump(mode="json"), "manifest": [s.to_dict() for s in self.manifest]}
        (workdir / "setup.json").write_text(json.dumps(setup))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p or os.getcwd() for p in sys.path)}
        for w in range(self.workers):
            ours, theirs = socket.socketpair()
            proc = subprocess.Popen(
                [sys.executable, "-c", _WORKER_MAIN, str(w), str(theirs.fileno()), str(workdir)],
                pass_fds=(theirs.fileno(),),
                env=env,
                stdin=subprocess.DEVNULL,
            )
            theirs.close()
            self._procs.append(proc)
            self._conns.append(Connection(ours.detach()))
        for w in range(self.workers):
            reply = self._recv(w, _START_TIMEOUT_S)
            if not reply["ok"]:
                raise FednError(f"simulation worker {w} could not start:\n{reply['error']}")
        self._results = [
            np.memmap(result_path(workdir, w), dtype=np.float64, mode="r", shape=(spec.combiners, size))
            for w in range(self.workers)
        ]

    def publish(self, arrays: NamedArrays) -> None:
        """Make ``arrays`` the model the next batch trains on."""
        assert self._model is not None, "start the pool first"
        _, payload = encode_payload(arrays)
        self._model[: len(payload)] = np.frombuffer(payload, dtype=np.uint8)

    def train(
        self,
        tasks: list[Task],
        *,
        round_index: int,
        config: dict,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> TrainBatch:
        """Train ``tasks`` on the published model; ``round_index`` is the ``round`` each client's config gets.

        The partials' arrays are views of the result maps: use them before the next call.
        """
        dealt = deal_tasks(tasks, self.workers, mergeable=self.mergeable)
        replies = self._run("round", round_index, config, dealt, on_progress)
        rows = [{g: self._results[w][g] for g in rep["groups"]} for w, rep in enumerate(replies)]
        return collect_train_batch(replies, rows, self.manifest, self.spec.combiners)

    def evaluate(
        self,
        tasks: list[Task],
        *,
        round_index: int,
        config: dict,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> EvalBatch:
        """Have the clients of ``tasks`` evaluate the published model; ``round_index`` goes into their config.

        Tasks are dealt by position whatever the rule: metric summaries merge by weight.
        """
        dealt = deal_tasks(tasks, self.workers, mergeable=True)
        replies = self._run("evaluate", round_index, config, dealt, on_progress)
        return collect_eval_batch(replies)

    def stop(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(OSError, ValueError):
                conn.send({"op": "stop"})
        for proc in self._procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for conn in self._conns:
            conn.close()
        self._conns, self._procs = [], []
        self._results, self._model, self._progress = [], None, None  # unmapped before the workdir goes

    def _run(
        self,
        op: str,
        round_index: int,
        config: dict,
        dealt: list[list[Task]],
        on_progress: Callable[[int, int], None] | None,
    ) -> list[dict]:
        assert self._progress is not None, "start the pool first"
        total = sum(len(t) for t in dealt)
        self._progress[:] = 0
        for conn, tasks in zip(self._conns, dealt, strict=True):
            conn.send({"op": op, "round": round_index, "config": config, "tasks": tasks})
        replies: list[dict | None] = [None] * self.workers
        pending = {conn: w for w, conn in enumerate(self._conns)}
        while pending:
            for conn in wait(list(pending), timeout=0.2):
                w = pending.pop(conn)
                replies[w] = self._recv(w)
                if not replies[w]["ok"]:
                    raise FednError(f"simulation worker {w} failed in round {round_index}:\n{replies[w]['error']}")
            for w in pending.values():
                if self._procs[w].poll() is not None:
                    raise self._dead(w)
            if on_progress is not None:
                on_progress(int(self._progress.sum()), total)
        return replies  # type: ignore[return-value]

    def _dead(self, w: int) -> FednError:
        code = self._procs[w].wait(5)
        return FednError(f"simulation worker {w} died (exit code {code})")

    def _recv(self, w: int, timeout_s: float | None = None) -> dict:
        conn, proc = self._conns[w], self._procs[w]
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not conn.poll(0.5):
            if proc.poll() is not None:
                raise self._dead(w)
            if deadline is not None and time.monotonic() > deadline:
                raise FednError(f"simulation worker {w} did not answer in {timeout_s:.0f}s")
        try:
            return conn.recv()
        except (EOFError, OSError):
            raise self._dead(w) from None
