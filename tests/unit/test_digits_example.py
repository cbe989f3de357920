"""The demo's client converges under FedAvg over label-skewed partitions (in-process, no network)."""

from __future__ import annotations

import numpy as np

from examples.digits import DigitsClient
from fedn.aggregation import WeightedMean, cast_like
from fedn.codec import manifest_of


def test_fedavg_over_four_skewed_clients_reaches_90_percent():
    clients = [DigitsClient(partition=i, num_partitions=4, alpha=0.5, seed=7) for i in range(4)]
    evaluator = DigitsClient(split="test", seed=7)
    params = clients[0].initial_parameters()
    accuracies = []
    for r in range(1, 6):
        acc = WeightedMean(manifest_of(params))
        for c in clients:
            new, n, metrics = c.train({k: v.copy() for k, v in params.items()}, {"round": r})
            assert metrics["train_loss"] > 0
            acc.add(new, n)
        params = cast_like(acc.partial().arrays, params)
        accuracies.append(evaluator.evaluate(params, {})[2]["accuracy"])
    assert accuracies[-1] >= 0.90, accuracies
    assert accuracies[-1] > accuracies[0]


def test_partitions_are_disjoint_and_skewed_and_seeded():
    clients = [DigitsClient(partition=i, num_partitions=4, alpha=0.5, seed=7) for i in range(4)]
    labels = [c.y.numpy() for c in clients]
    counts = np.array([np.bincount(y, minlength=10) for y in labels])
    assert counts.sum() == 1437  # the 80% training split of 1797
    assert (counts.max(axis=0) / counts.sum(axis=0)).mean() > 0.4  # each label is concentrated
    a, b = DigitsClient(seed=3).initial_parameters(), DigitsClient(seed=3).initial_parameters()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    c = DigitsClient(seed=4).initial_parameters()
    assert not all(np.array_equal(a[k], c[k]) for k in a)
