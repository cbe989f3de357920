"""The simulation driver: checks the spec, starts the worker pool, and plays sync rounds or an async run.

The driver holds one float64 model per combiner group, whatever the number of clients; the
global model reaches the workers once per batch through shared memory (see :mod:`fedn.sim.pool`).
Results depend only on the spec and the number of workers: clients are dealt to workers by
position and every sum is taken in a fixed order, so a rerun is bit-identical.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedn.aggregation import get_aggregator
from fedn.aggregation.server_optimizers import make_server_optimizer
from fedn.codec import NamedArrays, manifest_of
from fedn.errors import InvalidArgument
from fedn.loading import load_object
from fedn.records import SessionMode
from fedn.session_options import check_session_options
from fedn.sim.async_rounds import run_async
from fedn.sim.context import Pool, RunContext
from fedn.sim.memory import RssSampler
from fedn.sim.pool import EvalBatch, TrainBatch, WorkerPool
from fedn.sim.results import ResultLog, RoundMetrics, SimulationResult
from fedn.sim.spec import ClientFactory, SimulationSpec, client_profiles
from fedn.sim.sync_rounds import run_sync_rounds
from fedn.sim.workdir import run_workdir
from fedn.sim.worker import Task

__all__ = ["Simulation"]


class Simulation:
    """Run a :class:`SimulationSpec`; ``on_round`` gets each round's (or version's) metrics, ``on_progress``
    (done, total) of the batch in training. ``make_pool`` builds the pool the clients run in (local processes
    by default).

    The constructor refuses a bad spec (InvalidArgument) before any worker starts.
    """

    def __init__(self, spec: SimulationSpec, make_pool: Callable[..., Pool] = WorkerPool) -> None:
        check_session_options(
            aggregator=spec.aggregator,
            aggregator_params=spec.aggregator_config,
            strategy=spec.strategy,
            strategy_params=spec.strategy_config,
            min_clients=spec.min_clients,
            mode=spec.mode,
            given=spec.model_fields_set,
        )
        self.optimizer = make_server_optimizer(spec.strategy, spec.strategy_config)
        # more workers than clients would idle; the effective count is the spec's (results depend on it)
        self.spec = spec if spec.workers <= spec.clients else spec.model_copy(update={"workers": spec.clients})
        self.make_pool = make_pool  # takes WorkerPool's keywords; fedn.sim.ray_pool.ray_backend makes a RayPool
        self.cls = load_object(spec.client)
        if not isinstance(self.cls, type):
            raise InvalidArgument(f"{spec.client} is not a class")
        ClientFactory(self.cls, spec)  # refuses a --partition the class cannot take
        self.mergeable = get_aggregator(spec.aggregator).mergeable

    def run(
        self,
        on_round: Callable[[RoundMetrics], None] | None = None,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> SimulationResult:
        spec = self.spec
        started = time.perf_counter()
        initial = self.cls(**spec.client_args).initial_parameters()  # as `fedn local` seeds a session
        evaluator = None if spec.eval_args is None else self._central_evaluator()
        manifest = manifest_of(initial)
        model: NamedArrays = {s.name: np.array(initial[s.name]) for s in manifest}
        slowdown, dropout = client_profiles(spec)
        workdir = run_workdir()
        with workdir as tmp, RssSampler() as rss:
            log = ResultLog(spec=spec, evaluator=evaluator, rss=rss, on_round=on_round)
            pool = self.make_pool(
                workdir=Path(tmp),
                spec=spec,
                manifest=manifest,
                workers=spec.workers,
                mergeable=self.mergeable,
            )
            with pool:
                rss.watch(pool.pids())
                ctx = RunContext(
                    spec=spec,
                    pool=_MeteredPool(pool, log),
                    optimizer=self.optimizer,
                    slowdown=slowdown,
                    dropout=dropout,
                    log=log,
                    on_progress=on_progress,
                )
                run = run_async if spec.mode == SessionMode.ASYNC else run_sync_rounds
                model = run(ctx, model)
            return SimulationResult(
                rounds=log.rows,
                model=model,
                wall_s=time.perf_counter() - started,
                peak_rss_mb=rss.peak_mb(),
                failures=log.failures,
                evaluations=log.evaluations,
                traffic=log.traffic(),
            )

    def _central_evaluator(self) -> object:
        """The one client instance that evaluates centrally; InvalidArgument (one line) if it cannot be built."""
        kwargs = {**self.spec.client_args, **(self.spec.eval_args or {})}
        try:
            return self.cls(**kwargs)
        except Exception as exc:
            raise InvalidArgument(
                f"the central evaluating client {self.spec.client}({kwargs}) could not be built: "
                f"{type(exc).__name__}: {exc} (see --eval-client-arg)"
            ) from None


class _MeteredPool:
    """The run's pool, counting each training batch's bytes into the result log's next row."""

    def __init__(self, pool: Pool, log: ResultLog) -> None:
        self._pool, self._log = pool, log

    def __enter__(self) -> _MeteredPool:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def pids(self) -> list[int]:
        return self._pool.pids()

    def publish(self, arrays: NamedArrays) -> None:
        self._pool.publish(arrays)

    def train(self, tasks: list[Task], **kwargs: Any) -> TrainBatch:
        batch = self._pool.train(tasks, **kwargs)
        self._log.count_traffic(batch.uplink_bytes, batch.uploads, batch.downlink_bytes)
        return batch

    def evaluate(self, tasks: list[Task], **kwargs: Any) -> EvalBatch:
        return self._pool.evaluate(tasks, **kwargs)
