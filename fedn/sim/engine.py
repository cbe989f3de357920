"""The simulation driver: samples clients, hands them to worker processes, merges as the tiers do.

Each round the driver writes the global model once into a shared memory map, splits the sampled
clients over the workers, and merges what comes back in two steps, exactly as a deployment does:
the worker partials of each combiner group into that group's partial (the combiner's weighted
mean), then the group partials and the server optimizer step (the reducer's code). The driver holds
one float64 model per combiner group, whatever the number of clients.

Results depend only on the spec and the number of workers: clients are dealt to workers by
position and every sum is taken in a fixed order, so a rerun is bit-identical.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import numpy as np

from fedn.aggregation import (
    Partial,
    cast_like,
    get_aggregator,
    merge_metric_summaries,
    merge_partials,
)
from fedn.aggregation.server_optimizers import make_server_optimizer
from fedn.codec import NamedArrays, TensorSpec, encode_payload, manifest_of
from fedn.errors import FednError, InvalidArgument
from fedn.records import MetricSummary, SessionMode
from fedn.sampling import allocate_sample, sample_seed, sample_size, select_clients
from fedn.session_options import check_session_options
from fedn.sim.buffered import run_buffered
from fedn.sim.memory import RssSampler
from fedn.sim.spec import ClientFactory, SimulationSpec, client_profiles
from fedn.sim.worker import Task, flat_size, model_path, progress_path, result_path

__all__ = ["RoundMetrics", "Simulation", "SimulationResult"]

logger = logging.getLogger(__name__)

RoundMetrics = dict[str, Any]
_START_TIMEOUT_S = 300.0
_WORKER_MAIN = "from fedn.sim.worker import main; main()"


@dataclass
class SimulationResult:
    rounds: list[RoundMetrics]
    model: NamedArrays
    wall_s: float
    peak_rss_mb: float
    failures: list[tuple[int, int, str]] = field(default_factory=list)  # (round, client, error), first few


class Simulation:
    """Run a :class:`SimulationSpec`; ``on_round`` gets each round's metrics, ``on_progress`` (done, total)."""

    def __init__(self, spec: SimulationSpec) -> None:
        from fedn.cli.models import load_object

        check_session_options(  # bad configs fail before workers start
            aggregator=spec.aggregator,
            aggregator_params=spec.aggregator_config,
            strategy=spec.strategy,
            strategy_params=spec.strategy_config,
            min_clients=spec.min_clients,
            mode=spec.mode,
            given=spec.model_fields_set,
        )
        self.optimizer = make_server_optimizer(spec.strategy, spec.strategy_config)
        self.spec = spec
        self.cls = load_object(spec.client)
        if not isinstance(self.cls, type):
            raise InvalidArgument(f"{spec.client} is not a class")
        ClientFactory(self.cls, spec)  # refuses a --partition the class cannot take, before workers start
        self.mergeable = bool(getattr(get_aggregator(spec.aggregator), "mergeable", False))
        self.slowdown, self.dropout = client_profiles(spec)
        self.members = [list(range(g, spec.clients, spec.combiners)) for g in range(spec.combiners)]

    # -- the parts of a round ------------------------------------------------

    def sample(self, round_index: int) -> list[list[int]]:
        """The clients each combiner group asks this round (the reducer's split, the combiner's draw)."""
        spec = self.spec
        shares = {g: len(m) for g, m in enumerate(self.members)}
        if spec.fraction < 1.0:
            shares = allocate_sample(shares, sample_size(spec.clients, spec.fraction, spec.min_clients))
        seed = sample_seed(spec.seed, round_index)
        return [select_clients(self.members[g], shares[g], seed) for g in range(spec.combiners)]

    def drop_out(self, round_index: int, selected: list[list[int]]) -> tuple[list[Task], int]:
        """The tasks of the clients that show up, and how many of the selected did not."""
        draw = np.random.default_rng([self.spec.seed, round_index, 2]).random(self.spec.clients)
        tasks: list[Task] = []
        dropped = 0
        for group, ids in enumerate(selected):
            for cid in ids:
                if draw[cid] < self.dropout[cid]:
                    dropped += 1
                else:
                    tasks.append((cid, group, float(self.slowdown[cid])))
        return tasks, dropped

    def deal(self, tasks: list[Task], workers: int) -> list[list[Task]]:
        """Split tasks over workers: by position for FedAvg, whole groups for rules that need all updates."""
        if self.mergeable:
            return [tasks[w::workers] for w in range(workers)]
        out: list[list[Task]] = [[] for _ in range(workers)]
        for task in tasks:
            out[task[1] % workers].append(task)
        return out

    # -- the run -------------------------------------------------------------

    def run(
        self,
        on_round: Callable[[RoundMetrics], None] | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> SimulationResult:
        spec = self.spec
        started = time.perf_counter()
        initial = self.cls(**spec.client_args).initial_parameters()  # as `fedn local` seeds a session
        evaluator = None if spec.eval_args is None else self.cls(**{**spec.client_args, **spec.eval_args})
        manifest = manifest_of(initial)
        global_arrays: NamedArrays = {s.name: np.array(initial[s.name]) for s in manifest}
        workers = min(spec.workers, spec.clients)
        with tempfile.TemporaryDirectory(prefix="fedn-sim-", dir=_shm_dir()) as tmp, RssSampler() as rss:
            workdir = Path(tmp)
            _, payload = encode_payload(global_arrays)
            model_map = np.memmap(model_path(workdir), dtype=np.uint8, mode="w+", shape=(max(len(payload), 1),))
            for w in range(workers):
                np.memmap(
                    result_path(workdir, w), dtype=np.float64, mode="w+", shape=(spec.combiners, flat_size(manifest))
                ).flush()
            pool = _Pool(workers, workdir, spec, manifest)
            try:
                pool.start()
                rss.watch(pool.pids())
                rounds: list[RoundMetrics] = []
                failures: list[tuple[int, int, str]] = []
                sync_rounds = range(1, spec.rounds + 1)
                if spec.mode == SessionMode.ASYNC:  # versions on a modelled clock instead of rounds
                    sync_rounds = range(0)
                    evaluate = None
                    if evaluator is not None:

                        def evaluate(arrays: NamedArrays, r: int) -> dict[str, float]:
                            return _evaluate(evaluator, arrays, spec.config, r)

                    rounds, global_arrays, failures = run_buffered(
                        self, pool, model_map, global_arrays, evaluate, rss, on_round, on_progress, workers
                    )
                for r in sync_rounds:
                    t0 = time.perf_counter()
                    model_map[: len(payload)] = np.frombuffer(payload, dtype=np.uint8)
                    selected = self.sample(r)
                    tasks, dropped = self.drop_out(r, selected)
                    config = {**spec.config, **self.optimizer.client_config()}
                    replies = pool.run_round(r, config, self.deal(tasks, workers), on_progress)
                    row: RoundMetrics = {
                        "round": r,
                        "selected": sum(len(s) for s in selected),
                        "dropped": dropped,
                        "stragglers": sum(rep["stragglers"] for rep in replies),
                        "failed": sum(len(rep["failures"]) for rep in replies),
                    }
                    for rep in replies:
                        failures.extend((r, cid, err) for cid, err in rep["failures"][: max(0, 20 - len(failures))])
                    by_group, group_summaries = self.group_partials(replies, manifest, pool)
                    partials = list(by_group.values())
                    summaries = [s for group in sorted(group_summaries) for s in group_summaries[group]]
                    row["updates"] = sum(p.count for p in partials)
                    if row["updates"] >= spec.min_clients:
                        merged = merge_partials(partials)
                        new = self.optimizer.step(global_arrays, merged.arrays)
                        global_arrays = cast_like(new, global_arrays)
                        _, payload = encode_payload(global_arrays)
                        train = merge_metric_summaries(summaries)
                        if "train_loss" in train:
                            row["train_loss"] = train["train_loss"].mean
                        row["status"] = "done"
                    else:
                        row["status"] = "failed"
                        if r == 1 and row["updates"] == 0 and failures:
                            raise FednError(f"round 1: no client produced an update; first error: {failures[0][2]}")
                    row["modelled_s"] = _modelled_round_s(replies, spec)
                    if evaluator is not None and (r % spec.eval_every == 0 or r == spec.rounds):
                        row.update(_evaluate(evaluator, global_arrays, spec.config, r))
                    row["wall_s"] = time.perf_counter() - t0
                    row["rss_mb"] = rss.current_mb()
                    rounds.append(row)
                    if on_round is not None:
                        on_round(row)
            finally:
                pool.stop()
                del model_map
            return SimulationResult(
                rounds=rounds,
                model=global_arrays,
                wall_s=time.perf_counter() - started,
                peak_rss_mb=rss.peak_mb(),
                failures=failures,
            )

    def group_partials(
        self, replies: list[dict], manifest: list[TensorSpec], pool: _Pool
    ) -> tuple[dict[int, Partial], dict[int, list[tuple[dict[str, MetricSummary], float]]]]:
        """Each group's worker partials merged in worker order (the combiners' partials), and the
        metric summaries each worker sent for that group."""
        partials: dict[int, Partial] = {}
        summaries: dict[int, list[tuple[dict[str, MetricSummary], float]]] = {}
        for group in range(self.spec.combiners):
            parts = []
            for w, rep in enumerate(replies):
                info = rep["groups"].get(group)
                if info is not None:
                    arrays = pool.partial_arrays(w, group, manifest)
                    parts.append(Partial(arrays=arrays, total_weight=info["weight"], count=info["count"]))
                    summaries.setdefault(group, []).append(
                        ({k: MetricSummary(**v) for k, v in info["metrics"].items()}, info["weight"])
                    )
            if parts:
                partials[group] = merge_partials(parts)
        return partials, summaries


def _modelled_round_s(replies: list[dict], spec: SimulationSpec) -> float:
    slowest = max((rep["slowest_s"] for rep in replies), default=0.0)
    stragglers = sum(rep["stragglers"] for rep in replies)
    deadline = spec.heterogeneity.deadline_s
    return float(deadline) if stragglers and deadline is not None else slowest


def _evaluate(evaluator: Any, arrays: NamedArrays, config: dict, round_index: int) -> dict[str, float]:
    loss, _n, metrics = evaluator.evaluate({k: a.copy() for k, a in arrays.items()}, {**config, "round": round_index})
    out = {"loss": float(loss)}
    out.update({str(k): float(v) for k, v in metrics.items()})
    return out


def _shm_dir() -> str | None:
    """RAM-backed /dev/shm when there is one: the memory maps never touch a disk."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() else None


class _Pool:
    """Worker subprocesses, a socket pair each, and a shared progress counter per worker."""

    def __init__(self, workers: int, workdir: Path, spec: SimulationSpec, manifest: list[TensorSpec]) -> None:
        self.workdir, self.spec, self.manifest = workdir, spec, manifest
        self.progress = np.memmap(progress_path(workdir), dtype=np.int64, mode="w+", shape=(max(spec.workers, 1),))
        self.procs: list[subprocess.Popen] = []
        self.conns: list[Connection] = []
        self.maps: list[np.memmap] = []
        self.n = workers

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def start(self) -> None:
        setup = {"spec": self.spec.model_dump(mode="json"), "manifest": [s.to_dict() for s in self.manifest]}
        (self.workdir / "setup.json").write_text(json.dumps(setup))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p or os.getcwd() for p in sys.path)}
        for w in range(self.n):
            ours, theirs = socket.socketpair()
            proc = subprocess.Popen(
                [sys.executable, "-c", _WORKER_MAIN, str(w), str(theirs.fileno()), str(self.workdir)],
                pass_fds=(theirs.fileno(),),
                env=env,
                stdin=subprocess.DEVNULL,
            )
            theirs.close()
            self.procs.append(proc)
            self.conns.append(Connection(ours.detach()))
        for w in range(self.n):
            reply = self._recv(w, _START_TIMEOUT_S)
            if not reply["ok"]:
                raise FednError(f"simulation worker {w} could not start:\n{reply['error']}")
        size = flat_size(self.manifest)
        self.maps = [
            np.memmap(result_path(self.workdir, w), dtype=np.float64, mode="r", shape=(self.spec.combiners, size))
            for w in range(self.n)
        ]

    def _dead(self, w: int) -> FednError:
        code = self.procs[w].wait(5)
        return FednError(f"simulation worker {w} died (exit code {code})")

    def _recv(self, w: int, timeout_s: float | None = None) -> dict:
        conn, proc = self.conns[w], self.procs[w]
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

    def run_round(
        self,
        round_index: int,
        config: dict,
        dealt: list[list[Task]],
        on_progress: Callable[[int, int], None] | None,
    ) -> list[dict]:
        total = sum(len(t) for t in dealt)
        self.progress[:] = 0
        for conn, tasks in zip(self.conns, dealt, strict=True):
            conn.send({"op": "round", "round": round_index, "config": config, "tasks": tasks})
        replies: list[dict | None] = [None] * self.n
        pending = {conn: w for w, conn in enumerate(self.conns)}
        while pending:
            for conn in wait(list(pending), timeout=0.2):
                w = pending.pop(conn)
                replies[w] = self._recv(w)
                if not replies[w]["ok"]:
                    raise FednError(f"simulation worker {w} failed in round {round_index}:\n{replies[w]['error']}")
            for w in pending.values():
                if self.procs[w].poll() is not None:
                    raise self._dead(w)
            if on_progress is not None:
                on_progress(int(self.progress.sum()), total)
        return replies  # type: ignore[return-value]

    def partial_arrays(self, worker: int, group: int, manifest: list[TensorSpec]) -> NamedArrays:
        row, out, offset = self.maps[worker][group], {}, 0
        for spec in manifest:
            out[spec.name] = row[offset : offset + spec.size].reshape(spec.shape)
            offset += spec.size
        return out

    def stop(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError, ValueError):
                conn.send({"op": "stop"})
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for conn in self.conns:
            conn.close()
        self.maps = []
