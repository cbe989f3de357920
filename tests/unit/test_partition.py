"""Partitioners: disjoint, complete, reproducible, and as skewed as alpha says."""

from __future__ import annotations

import numpy as np
import pytest

from fedn.partition import dirichlet_partition, iid_partition, quantity_skew_partition, shard_partition

LABELS = np.repeat(np.arange(10), 100)


def _check_cover(parts, n):
    joined = np.concatenate(parts)
    assert len(joined) == n and len(np.unique(joined)) == n


def _mean_label_entropy(parts) -> float:
    entropies = []
    for p in parts:
        counts = np.bincount(LABELS[p], minlength=10) / len(p)
        nz = counts[counts > 0]
        entropies.append(-(nz * np.log(nz)).sum())
    return float(np.mean(entropies))


def test_iid_partition():
    parts = iid_partition(103, 4, seed=1)
    _check_cover(parts, 103)
    assert sorted(len(p) for p in parts) == [25, 26, 26, 26]
    assert all(np.array_equal(a, b) for a, b in zip(parts, iid_partition(103, 4, seed=1), strict=True))


def test_dirichlet_is_disjoint_complete_and_reproducible():
    parts = dirichlet_partition(LABELS, 8, alpha=0.5, seed=3)
    _check_cover(parts, len(LABELS))
    assert min(len(p) for p in parts) >= 10
    again = dirichlet_partition(LABELS, 8, alpha=0.5, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = dirichlet_partition(LABELS, 8, alpha=0.5, seed=4)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_smaller_alpha_means_more_label_skew():
    skewed = _mean_label_entropy(dirichlet_partition(LABELS, 8, alpha=0.1, seed=0))
    near_iid = _mean_label_entropy(dirichlet_partition(LABELS, 8, alpha=100.0, seed=0))
    assert skewed < near_iid - 0.5
    assert near_iid > 0.95 * np.log(10)


@pytest.mark.parametrize(
    ("args", "match"),
    [((LABELS, 0, 1.0), "num_partitions"), ((LABELS, 4, 0.0), "alpha"), ((LABELS[:20], 4, 1.0), "cannot give")],
)
def test_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        dirichlet_partition(*args)


def test_shards_give_each_partition_few_labels():
    parts = shard_partition(LABELS, 10, shards_per_partition=2, seed=5)
    _check_cover(parts, len(LABELS))
    assert all(len(np.unique(LABELS[p])) <= 3 for p in parts)  # 2 shards: 2 labels, 3 if a shard straddles
    assert {len(p) for p in parts} == {100}
    again = shard_partition(LABELS, 10, shards_per_partition=2, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_quantity_skew_keeps_labels_mixed_but_sizes_unequal():
    parts = quantity_skew_partition(len(LABELS), 10, alpha=0.3, seed=2, min_size=5)
    _check_cover(parts, len(LABELS))
    sizes = sorted(len(p) for p in parts)
    assert sizes[0] >= 5 and sizes[-1] > 4 * sizes[0]
    even = sorted(len(p) for p in quantity_skew_partition(len(LABELS), 10, alpha=1000.0, seed=2))
    assert even[-1] - even[0] < 30
    big = max(parts, key=len)
    assert len(np.unique(LABELS[big])) == 10  # labels stay IID within a partition
    with pytest.raises(ValueError):
        quantity_skew_partition(10, 20)
    with pytest.raises(ValueError):
        shard_partition(LABELS[:5], 10)
