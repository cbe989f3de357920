"""scikit-learn's digits (ships with the package: nothing downloads), split and partitioned reproducibly."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from fedn.partition import partition_labels

__all__ = ["load_held_out", "load_partition", "load_test_set", "train_labels"]

_TEST_FRACTION = 0.2
_SPLIT_SEED = 42


@lru_cache(maxsize=1)
def _split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    return train_test_split(x, y.astype(np.int64), test_size=_TEST_FRACTION, random_state=_SPLIT_SEED, stratify=y)


def load_test_set() -> tuple[np.ndarray, np.ndarray]:
    """The held-out 20%, never used for training."""
    _, x_test, _, y_test = _split()
    return x_test, y_test


def load_held_out(partition: int, num_partitions: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Client ``partition``'s own held-out data for federated evaluation: an even, seeded share of the
    held-out 20%. The shares split that set, so the example-weighted mean of every client's accuracy is
    the accuracy on the whole held-out set (the central evaluation's figure)."""
    if not 0 <= partition < num_partitions:
        raise ValueError(f"partition {partition} is outside 0..{num_partitions - 1}")
    x_test, y_test = load_test_set()
    order = np.random.default_rng(seed).permutation(len(y_test))
    idx = np.array_split(order, num_partitions)[partition]
    return x_test[idx], y_test[idx]


def train_labels() -> np.ndarray:
    """Labels of the training 80%, for ``fedn partition --labels examples.digits.data:train_labels``."""
    return _split()[2]


def load_partition(
    partition: int, num_partitions: int, alpha: float, seed: int, partitioner: str = "dirichlet"
) -> tuple[np.ndarray, np.ndarray]:
    """Partition ``partition`` of the training 80%, split by ``partitioner`` (label skew by default)."""
    if not 0 <= partition < num_partitions:
        raise ValueError(f"partition {partition} is outside 0..{num_partitions - 1}")
    x_train, _, y_train, _ = _split()
    if num_partitions == 1:
        return x_train, y_train
    idx = _partitions(num_partitions, alpha, seed, partitioner)[partition]
    return x_train[idx], y_train[idx]


@lru_cache(maxsize=4)
def _partitions(num_partitions: int, alpha: float, seed: int, partitioner: str) -> list[np.ndarray]:
    """All partitions at once, cached: a simulator builds many clients of one split in a process."""
    _, _, y_train, _ = _split()
    return partition_labels(y_train, num_partitions, partitioner, alpha=alpha, seed=seed)
