"""Client classes the simulator tests load by dotted path in worker processes."""

from __future__ import annotations

import os

import numpy as np

from bench.workloads import SyntheticClient


class FlakyClient(SyntheticClient):
    """Raises in ``train`` on odd partitions."""

    def train(self, params, config):
        if self.partition % 2:
            raise RuntimeError(f"partition {self.partition} is broken")
        return super().train(params, config)


class NaNClient(SyntheticClient):
    """Partition 0 returns NaN; the others train normally."""

    def train(self, params, config):
        w, n, m = super().train(params, config)
        if self.partition == 0:
            w = {"w": np.full_like(w["w"], np.nan)}
        return w, n, m


class AlwaysFailsClient(SyntheticClient):
    def train(self, params, config):
        raise ValueError("no data on this device")


class CrashingClient(SyntheticClient):
    """Kills its worker process, as a segfaulting extension would."""

    def train(self, params, config):
        os._exit(3)


class NoPartitionerClient:
    def __init__(self, partition: int = 0) -> None:
        self.partition = partition

    def initial_parameters(self):
        return {"w": np.zeros(4, dtype=np.float32)}
