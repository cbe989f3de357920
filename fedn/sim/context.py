"""What a sync or async simulation run is given: the spec, the pool, the server optimizer, the client
profiles and the result log. The engine builds it; the two kinds of run share nothing else."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from fedn.aggregation.server_optimizers import ServerOptimizer
from fedn.codec import NamedArrays
from fedn.records import ConfigScalar
from fedn.sim.pool import EvalBatch, TrainBatch
from fedn.sim.results import ResultLog
from fedn.sim.spec import ProfileColumn, SimulationSpec
from fedn.sim.worker import Task

__all__ = ["Pool", "RunContext"]


class Pool(Protocol):
    """Where clients train and evaluate: the local :class:`~fedn.sim.pool.WorkerPool` or
    :class:`~fedn.sim.ray_pool.RayPool`; both deal tasks and sum partials the same way. Entering starts it."""

    def __enter__(self) -> Pool: ...

    def __exit__(self, *exc: object) -> None: ...

    def pids(self) -> list[int]: ...  # its processes on this machine, for the peak-memory figure

    def publish(self, arrays: NamedArrays) -> None: ...

    def train(
        self, tasks: list[Task], *, round_index: int, config: dict, on_progress: Callable[[int, int], None] | None
    ) -> TrainBatch: ...

    def evaluate(
        self, tasks: list[Task], *, round_index: int, config: dict, on_progress: Callable[[int, int], None] | None
    ) -> EvalBatch: ...


@dataclass(frozen=True)
class RunContext:
    """One run's collaborators; ``slowdown`` and ``dropout`` are per-client profiles drawn from the seed."""

    spec: SimulationSpec
    pool: Pool
    optimizer: ServerOptimizer
    slowdown: ProfileColumn
    dropout: ProfileColumn
    log: ResultLog
    on_progress: Callable[[int, int], None] | None = None

    def client_config(self) -> dict[str, ConfigScalar]:
        """The config of each train call: the user's, plus what the server optimizer asks of clients."""
        return {**self.spec.config, **self.optimizer.client_config()}
