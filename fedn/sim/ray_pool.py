"""The simulator's pool on a Ray cluster: one actor per worker, the model and partials in Ray's object store.

The tasks are dealt to worker slots exactly as :class:`~fedn.sim.pool.WorkerPool` deals them, each
slot's share is trained by the same :class:`~fedn.sim.worker.Worker` code in its actor, and the
partials are summed in slot order by the same function, so a run is bit-identical to the local
backend with the same seed and number of workers. The published model is put once per batch into
the object store; every actor reads it there (zero-copy on its node).

When an actor dies (its node went away), its share is run again, once, on a live actor, so the
figures do not change; a share that fails again, or takes longer than ``timeout_s``, becomes one
failure per client of it, and the batch ends. Later batches send a dead actor's slot to a live one.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

import numpy as np

from fedn.codec import NamedArrays, TensorSpec, encode_payload
from fedn.compression import parse_compression
from fedn.errors import FailedPrecondition, FednError, InvalidArgument
from fedn.sim.pool import EvalBatch, TrainBatch, collect_eval_batch, collect_train_batch, deal_tasks
from fedn.sim.spec import SimulationSpec
from fedn.sim.worker import Task, Worker, flat_size

__all__ = ["RayOptions", "RayPool", "ray_backend", "require_ray"]

_INSTALL = "--backend ray needs Ray: pip install 'fedn[ray]'"


_CONNECT_TIMEOUT_S = 10.0  # for the head node's port to answer at all


@dataclass(frozen=True)
class RayOptions:
    """Where and how the actors run. ``address`` None: the cluster this process is connected to, else a
    new one on this machine. ``client_cpus``/``client_gpus`` are each actor's Ray resources (an actor
    runs one client at a time). ``timeout_s`` bounds one worker's share of a batch; ``start_timeout_s``
    the actors' start."""

    address: str | None = None
    client_cpus: float = 1.0
    client_gpus: float = 0.0
    timeout_s: float = 3600.0
    start_timeout_s: float = 300.0


def require_ray() -> ModuleType:
    """The ``ray`` module, or FailedPrecondition saying what to install."""
    try:
        import ray
    except ImportError:
        raise FailedPrecondition(_INSTALL) from None
    return ray


def ray_backend(options: RayOptions) -> Callable[..., RayPool]:
    """A ``make_pool`` for :class:`~fedn.sim.engine.Simulation` that runs on Ray with ``options``;
    FailedPrecondition without Ray, InvalidArgument for a negative resource or a timeout ≤ 0."""
    if not all(0 <= r < math.inf for r in (options.client_cpus, options.client_gpus)):  # NaN fails too
        raise InvalidArgument(
            f"--client-cpus and --client-gpus must be finite and not negative, "
            f"not {options.client_cpus:g} and {options.client_gpus:g}"
        )
    if not all(0 < t < math.inf for t in (options.timeout_s, options.start_timeout_s)):
        raise InvalidArgument(f"--ray-timeout must be a finite number of seconds above 0, not {options.timeout_s:g}")
    require_ray()
    return functools.partial(RayPool, options=options)


class _Actor:
    """A worker slot's process on the cluster; it keeps its client factory and result rows between batches."""

    def __init__(self, index: int, spec: dict, manifest: list[dict]) -> None:
        spec_ = SimulationSpec.model_validate(spec)
        specs = [TensorSpec.from_dict(d) for d in manifest]
        self.worker = Worker(
            index,
            spec_,
            specs,
            model=np.zeros(0, dtype=np.uint8),
            progress=np.zeros(max(spec_.workers, index + 1), dtype=np.int64),
            results=np.zeros((spec_.combiners, flat_size(specs)), dtype=np.float64),
        )

    def where(self) -> tuple[int, str]:
        import ray

        return os.getpid(), ray.util.get_node_ip_address()

    def run(self, op: str, model: np.ndarray, round_index: int, config: dict, tasks: list[Task]) -> dict:
        self.worker.model = model  # a read-only view of the object store
        if op == "evaluate":
            return self.worker.run_evaluation(round_index, config, tasks)
        reply = self.worker.run_round(round_index, config, tasks)
        reply["rows"] = {g: self.worker.results[g].copy() for g in reply["groups"]}
        return reply


class RayPool:
    """Ray actors standing in for :class:`~fedn.sim.pool.WorkerPool`'s processes; the same interface.

    Entering connects to (or starts) Ray and starts one actor per worker; FailedPrecondition in one
    line when the cluster cannot hold them with the per-client resources asked for.
    """

    def __init__(
        self,
        *,
        workdir: Path,
        spec: SimulationSpec,
        manifest: list[TensorSpec],
        workers: int,
        mergeable: bool,
        options: RayOptions,
    ) -> None:
        uplink = parse_compression(spec.compression)
        if not uplink.lossless and uplink.error_feedback:
            raise InvalidArgument(
                f"--backend ray cannot keep error feedback for compression {uplink.text()}: the residuals live in "
                "a per-client memory-mapped file on one machine; add error_feedback=false or use --backend local"
            )
        self.spec, self.manifest, self.workers, self.mergeable = spec, manifest, workers, mergeable
        self.options = options
        self._ray: Any = None
        self._owns_ray = False
        self._actors: list[Any] = []
        self._alive: list[bool] = []
        self._slot_actor: list[int] = []  # which actor runs each worker slot's share
        self._pids: list[int] = []
        self._model: Any = None

    def __enter__(self) -> RayPool:
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
        return list(self._pids)

    def start(self) -> None:
        ray = self._ray = require_ray()
        opts = self.options
        if not ray.is_initialized():
            _check_reachable(opts.address, min(opts.start_timeout_s, _CONNECT_TIMEOUT_S))
            try:
                ray.init(address=opts.address, include_dashboard=False, log_to_driver=False, configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise FailedPrecondition(f"cannot connect to the Ray cluster at {opts.address}: {exc}") from None
            self._owns_ray = True
        _check_capacity(ray, self.workers, opts)
        actor = ray.remote(_Actor).options(
            num_cpus=opts.client_cpus,
            num_gpus=opts.client_gpus,
            max_restarts=0,  # a dead actor's share is re-run here, so the figures cannot change
            runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p or os.getcwd() for p in sys.path)}},
        )
        setup = (self.spec.model_dump(mode="json"), [s.to_dict() for s in self.manifest])
        self._actors = [actor.remote(w, *setup) for w in range(self.workers)]
        self._alive = [True] * self.workers
        self._slot_actor = list(range(self.workers))
        here = ray.util.get_node_ip_address()
        refs = [a.where.remote() for a in self._actors]
        try:
            places = ray.get(refs, timeout=opts.start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise FednError(f"the Ray workers did not start in {opts.start_timeout_s:.0f}s") from None
        except ray.exceptions.RayError as exc:
            raise FednError(f"a Ray worker could not start: {_first_line(exc)}") from None
        self._pids = [pid for pid, ip in places if ip == here]

    def publish(self, arrays: NamedArrays) -> None:
        """Make ``arrays`` the model the next batch trains on: one object in the store for every actor."""
        assert self._ray is not None, "start the pool first"
        _, payload = encode_payload(arrays)
        self._model = self._ray.put(np.frombuffer(payload, dtype=np.uint8))

    def train(
        self,
        tasks: list[Task],
        *,
        round_index: int,
        config: dict,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> TrainBatch:
        dealt = deal_tasks(tasks, self.workers, mergeable=self.mergeable)
        replies = self._run("round", round_index, config, dealt, on_progress)
        rows = [rep.get("rows", {}) for rep in replies]
        return collect_train_batch(replies, rows, self.manifest, self.spec.combiners)

    def evaluate(
        self,
        tasks: list[Task],
        *,
        round_index: int,
        config: dict,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> EvalBatch:
        dealt = deal_tasks(tasks, self.workers, mergeable=True)
        return collect_eval_batch(self._run("evaluate", round_index, config, dealt, on_progress))

    def stop(self) -> None:
        ray = self._ray
        if ray is None:
            return
        for actor in self._actors:
            with contextlib.suppress(Exception):  # already gone with its node
                ray.kill(actor)
        self._actors, self._model = [], None
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False
        self._ray = None

    def _run(
        self,
        op: str,
        round_index: int,
        config: dict,
        dealt: list[list[Task]],
        on_progress: Callable[[int, int], None] | None,
    ) -> list[dict]:
        ray, errors = self._ray, self._ray.exceptions
        total, done = sum(len(t) for t in dealt), 0
        replies: list[dict | None] = [None] * self.workers
        retried: set[int] = set()
        pending = {self._submit(op, w, round_index, config, dealt[w]): w for w in range(self.workers)}
        deadline = time.monotonic() + self.options.timeout_s
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                for ref, w in pending.items():
                    ray.cancel(ref, force=True)
                    self._alive[self._slot_actor[w]] = False
                    replies[w] = _failed(op, dealt[w], f"no answer in {self.options.timeout_s:.0f}s")
                break
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=min(left, 1.0))
            for ref in ready:
                w = pending.pop(ref)
                try:
                    replies[w] = ray.get(ref)
                except errors.RayTaskError as exc:  # the worker code itself failed, not its node
                    raise FednError(f"Ray worker {w} failed in round {round_index}: {_first_line(exc)}") from None
                except errors.RayError as exc:
                    self._alive[self._slot_actor[w]] = False
                    if w in retried or not any(self._alive):
                        replies[w] = _failed(op, dealt[w], f"its Ray worker was lost: {_first_line(exc)}")
                        continue
                    retried.add(w)
                    self._slot_actor[w] = self._live_actor(w)
                    pending[self._submit(op, w, round_index, config, dealt[w])] = w
                    continue
                done += len(dealt[w])
                if on_progress is not None:
                    on_progress(done, total)
        if not any(self._alive):
            raise FednError(f"every Ray worker was lost in round {round_index}")
        return replies  # type: ignore[return-value]

    def _submit(self, op: str, slot: int, round_index: int, config: dict, tasks: list[Task]) -> Any:
        actor = self._actors[self._slot_actor[slot]]
        return actor.run.remote(op, self._model, round_index, config, tasks)

    def _live_actor(self, slot: int) -> int:
        """The next live actor after ``slot``'s, so the shares of a lost node spread over the others."""
        n = len(self._actors)
        return next(a % n for a in range(slot + 1, slot + 1 + n) if self._alive[a % n])


def _failed(op: str, tasks: list[Task], reason: str) -> dict:
    failures = [(task[0], reason) for task in tasks]
    if op == "evaluate":
        return {"failures": failures, "evaluations": []}
    return {"groups": {}, "rows": {}, "failures": failures, "stragglers": 0, "slowest_s": 0.0}


def _check_capacity(ray: Any, workers: int, opts: RayOptions) -> None:
    """FailedPrecondition, in one line, unless the live nodes can hold ``workers`` actors at once: an
    actor that cannot be placed would wait for ever."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    fits = 0
    for res in nodes:
        per_node = [
            math.floor(res.get(name, 0.0) / need + 1e-9)
            for name, need in (("CPU", opts.client_cpus), ("GPU", opts.client_gpus))
            if need > 0
        ]
        fits += min(per_node) if per_node else workers
    if fits >= workers:
        return
    cpus = sum(r.get("CPU", 0.0) for r in nodes)
    gpus = sum(r.get("GPU", 0.0) for r in nodes)
    raise FailedPrecondition(
        f"the Ray cluster ({len(nodes)} nodes, {cpus:g} CPUs, {gpus:g} GPUs) holds {fits} workers at "
        f"--client-cpus {opts.client_cpus:g} --client-gpus {opts.client_gpus:g}, not {workers}: "
        "lower --workers or the per-client resources"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _check_reachable(address: str | None, timeout_s: float) -> None:
    """FailedPrecondition unless something listens at a ``host:port`` cluster address: ``ray.init``
    retries an address where nothing answers for ever. ``auto``, ``ray://`` and none are Ray's to find."""
    if not address or address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise InvalidArgument(f"--address must be host:port (the head node's port, 6379 by default), not {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:  # refused, unreachable, unknown host, or no answer within timeout_s
        reason = str(exc) or f"no answer in {timeout_s:g}s"
        raise FailedPrecondition(
            f"cannot connect to the Ray cluster at {address}: {reason}; is `ray start --head` running there?"
        ) from None
