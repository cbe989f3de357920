"""Benchmark workloads: a client with a model of any size and a trivial train step.

It measures the framework, not the model: ``train`` moves every parameter a little toward a
per-client target, so updates differ and the aggregate is checkable, at the cost of a few passes
over memory.
"""

from __future__ import annotations

import numpy as np

from fedn.sim import SimulationSpec, auto_workers, parse_spec

__all__ = ["SyntheticClient", "digits_spec", "synthetic_spec"]


def synthetic_spec(clients: int, params: int, rounds: int, workers: int | None = None, **extra) -> SimulationSpec:
    """Training rounds of :class:`SyntheticClient` over two combiner groups (no evaluation: these
    benchmarks measure training)."""
    return parse_spec(
        client="bench.workloads:SyntheticClient",
        client_args={"params": params},
        eval_args=None,
        federated_eval=False,
        clients=clients,
        combiners=2,
        rounds=rounds,
        workers=workers or auto_workers(),
        **extra,
    )


def digits_spec(clients: int, rounds: int, alpha: float = 0.3, workers: int | None = None, **extra) -> SimulationSpec:
    """The digits example over two combiner groups, label-skewed by Dirichlet(``alpha``), seed 7: the
    accuracy benchmarks' common run."""
    return parse_spec(
        client="examples.digits:DigitsClient",
        clients=clients,
        combiners=2,
        rounds=rounds,
        partition="dirichlet",
        alpha=alpha,
        seed=7,
        workers=workers or auto_workers(),
        **extra,
    )


class SyntheticClient:
    """``params`` float32 parameters in one tensor; ``examples`` is this client's aggregation weight."""

    def __init__(self, params: int = 100_000, examples: int = 10, partition: int = 0, num_partitions: int = 1) -> None:
        self.params = params
        self.examples = examples
        self.partition = partition
        self.target = np.float32(partition % 10) / 10

    def initial_parameters(self) -> dict[str, np.ndarray]:
        return {"w": np.zeros(self.params, dtype=np.float32)}

    def train(self, params: dict[str, np.ndarray], config: dict) -> tuple[dict[str, np.ndarray], int, dict[str, float]]:
        w = params["w"]
        w += np.float32(0.1) * (self.target - w)  # in place: the array is this client's own copy
        return {"w": w}, self.examples, {"train_loss": float(abs(self.target - w[0]))}

    def evaluate(self, params: dict[str, np.ndarray], config: dict) -> tuple[float, int, dict[str, float]]:
        loss = float(np.mean((params["w"] - 0.45) ** 2))
        return loss, 1, {"distance": loss**0.5}
