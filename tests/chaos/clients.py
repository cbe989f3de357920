"""The chaos suite's client: a tiny model and a fixed pause per training, so rounds last long enough
for a fault to land inside one while computing almost nothing."""

from __future__ import annotations

import time

import numpy as np

from bench.workloads import SyntheticClient

__all__ = ["PacedClient"]


class PacedClient(SyntheticClient):
    """:class:`SyntheticClient` with ``params`` parameters that sleeps ``train_s`` seconds per training."""

    def __init__(self, train_s: float = 0.2, params: int = 256, **kwargs: int) -> None:
        super().__init__(params=params, **kwargs)
        self.train_s = train_s

    def train(self, params: dict[str, np.ndarray], config: dict) -> tuple[dict[str, np.ndarray], int, dict[str, float]]:
        time.sleep(self.train_s)
        return super().train(params, config)
