"""Client classes for the simulator's federated evaluation tests, loaded by dotted path in worker processes."""

from __future__ import annotations

import numpy as np

from bench.workloads import SyntheticClient


class ScoredClient(SyntheticClient):
    """Evaluates on ``1 + partition % 3`` examples with a loss and an accuracy that differ per client, so an
    unweighted mean, or one over the wrong clients, gives another figure than the weighted one."""

    def evaluate(self, params, config):
        loss = float(np.mean((params["w"] - self.target) ** 2)) + 0.01 * self.partition
        return loss, 1 + self.partition % 3, {"accuracy": 1.0 / (1.0 + loss), "round_seen": float(config["round"])}


class BadEvalClient(ScoredClient):
    """Partition 1 raises in ``evaluate``, partition 2 returns a NaN loss, partition 3 a NaN metric (left out)."""

    def evaluate(self, params, config):
        loss, n, metrics = super().evaluate(params, config)
        if self.partition == 1:
            raise RuntimeError("held-out data is missing")
        if self.partition == 2:
            return float("nan"), n, metrics
        if self.partition == 3:
            return loss, n, {**metrics, "accuracy": float("nan")}
        return loss, n, metrics
