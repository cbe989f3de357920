"""What a sync or async simulation run is given: the spec, the pool, the server optimizer, the client
profiles and the result log. The engine builds it; the two kinds of run share nothing else."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedn.aggregation.server_optimizers import ServerOptimizer
from fedn.records import ConfigScalar
from fedn.sim.pool import WorkerPool
from fedn.sim.results import ResultLog
from fedn.sim.spec import SimulationSpec

__all__ = ["RunContext"]


@dataclass(frozen=True)
class RunContext:
    """One run's collaborators; ``slowdown`` and ``dropout`` are per-client profiles drawn from the seed."""

    spec: SimulationSpec
    pool: WorkerPool
    optimizer: ServerOptimizer
    slowdown: np.ndarray
    dropout: np.ndarray
    log: ResultLog
    on_progress: Callable[[int, int], None] | None = None

    def client_config(self) -> dict[str, ConfigScalar]:
        """The config of each train call: the user's, plus what the server optimizer asks of clients."""
        return {**self.spec.config, **self.optimizer.client_config()}
