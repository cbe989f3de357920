"""scikit-learn's digits (ships with the package: nothing downloads), split and partitioned reproducibly."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from fedn.partition import dirichlet_partition

__all__ = ["load_partition", "load_test_set"]

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


def load_partition(partition: int, num_partitions: int, alpha: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Partition ``partition`` of the training 80%, label-skewed by Dirichlet(``alpha``)."""
    if not 0 <= partition < num_partitions:
        raise ValueError(f"partition {partition} is outside 0..{num_partitions - 1}")
    x_train, _, y_train, _ = _split()
    if num_partitions == 1:
        return x_train, y_train
    idx = dirichlet_partition(y_train, num_partitions, alpha, seed)[partition]
    return x_train[idx], y_train[idx]
