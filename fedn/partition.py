"""Seeded data partitioners: split example indices across clients (IID or label-skewed)."""

from __future__ import annotations

import numpy as np

__all__ = [
    "PARTITIONERS",
    "dirichlet_partition",
    "iid_partition",
    "partition_labels",
    "quantity_skew_partition",
    "shard_partition",
]


def iid_partition(num_examples: int, num_partitions: int, seed: int = 0) -> list[np.ndarray]:
    """Shuffle ``range(num_examples)`` and cut it into ``num_partitions`` near-equal parts."""
    if num_partitions < 1 or num_examples < num_partitions:
        raise ValueError(f"cannot split {num_examples} examples into {num_partitions} partitions")
    order = np.random.default_rng(seed).permutation(num_examples)
    return [np.sort(part) for part in np.array_split(order, num_partitions)]


def dirichlet_partition(
    labels: np.ndarray,
    num_partitions: int,
    alpha: float,
    seed: int = 0,
    *,
    min_size: int = 10,
    max_attempts: int = 100,
) -> list[np.ndarray]:
    """Label skew: each class is split over partitions in Dirichlet(``alpha``) proportions.

    Small ``alpha`` gives each partition few classes; large ``alpha`` approaches IID. Draws are
    repeated (at most ``max_attempts``) until every partition has at least ``min_size`` examples;
    if none does (many partitions of a small dataset), the last draw is topped up from the largest
    partitions.
    """
    labels = np.asarray(labels)
    if num_partitions < 1:
        raise ValueError("num_partitions must be at least 1")
    if alpha <= 0:
        raise ValueError("alpha must be positive")
    if len(labels) < num_partitions * min_size:
        raise ValueError(f"{len(labels)} examples cannot give {num_partitions} partitions of {min_size}")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    for _ in range(max_attempts):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_partitions)]
        for idx in by_class:
            proportions = rng.dirichlet(np.full(num_partitions, alpha))
            cuts = (np.cumsum(proportions)[:-1] * len(idx)).astype(int)
            for p, chunk in enumerate(np.split(idx, cuts)):
                parts[p].append(chunk)
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in out) >= min_size:
            return out
    return _top_up(out, min_size, rng)


def _top_up(parts: list[np.ndarray], min_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Move random examples from the largest partitions to those under ``min_size``.

    The fallback when no draw satisfies ``min_size`` (many partitions, few examples): the label
    skew of the last draw is kept except for the few examples moved.
    """
    parts = [list(p) for p in parts]
    for small in sorted(range(len(parts)), key=lambda i: len(parts[i])):
        while len(parts[small]) < min_size:
            donor = max(range(len(parts)), key=lambda i: (len(parts[i]), -i))
            parts[small].append(parts[donor].pop(int(rng.integers(len(parts[donor])))))
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def shard_partition(
    labels: np.ndarray, num_partitions: int, shards_per_partition: int = 2, seed: int = 0
) -> list[np.ndarray]:
    """Pathological label skew (McMahan et al., 2017): sort by label, cut into equal shards, deal each
    partition ``shards_per_partition`` of them, so each sees only that many labels (or a few more).
    """
    labels = np.asarray(labels)
    num_shards = num_partitions * shards_per_partition
    if num_partitions < 1 or shards_per_partition < 1:
        raise ValueError("num_partitions and shards_per_partition must be at least 1")
    if len(labels) < num_shards:
        raise ValueError(f"{len(labels)} examples cannot make {num_shards} shards")
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind="stable")
    shards = np.array_split(order, num_shards)
    dealt = rng.permutation(num_shards)
    return [np.sort(np.concatenate([shards[j] for j in dealt[i::num_partitions]])) for i in range(num_partitions)]


def quantity_skew_partition(
    num_examples: int, num_partitions: int, alpha: float = 1.0, seed: int = 0, *, min_size: int = 1
) -> list[np.ndarray]:
    """IID labels but unequal sizes: partition sizes follow Dirichlet(``alpha``) proportions
    (small ``alpha``: a few large partitions and many small ones), each at least ``min_size``.
    """
    if num_partitions < 1 or alpha <= 0:
        raise ValueError("num_partitions must be at least 1 and alpha positive")
    if num_examples < num_partitions * min_size:
        raise ValueError(f"{num_examples} examples cannot give {num_partitions} partitions of {min_size}")
    rng = np.random.default_rng(seed)
    spare = num_examples - num_partitions * min_size
    sizes = min_size + np.floor(rng.dirichlet(np.full(num_partitions, alpha)) * spare).astype(int)
    sizes[: num_examples - sizes.sum()] += 1  # hand out what flooring left over
    order = rng.permutation(num_examples)
    return [np.sort(part) for part in np.split(order, np.cumsum(sizes)[:-1])]


PARTITIONERS = ("iid", "dirichlet", "shard", "quantity")


def partition_labels(
    labels: np.ndarray,
    num_partitions: int,
    scheme: str = "iid",
    *,
    alpha: float = 0.5,
    shards: int = 2,
    seed: int = 0,
    min_size: int | None = None,
) -> list[np.ndarray]:
    """Split example indices by ``scheme`` (one of :data:`PARTITIONERS`); ValueError on a bad choice.

    ``alpha`` drives ``dirichlet`` (label skew) and ``quantity`` (size skew); ``shards`` is the
    number of label shards per partition for ``shard``. ``min_size`` defaults to the most every
    partition can have, at most 10.
    """
    labels = np.asarray(labels)
    if min_size is None:
        min_size = max(1, min(10, len(labels) // max(num_partitions, 1)))
    if scheme == "iid":
        return iid_partition(len(labels), num_partitions, seed)
    if scheme == "dirichlet":
        return dirichlet_partition(labels, num_partitions, alpha, seed, min_size=min_size)
    if scheme == "shard":
        return shard_partition(labels, num_partitions, shards, seed)
    if scheme == "quantity":
        return quantity_skew_partition(len(labels), num_partitions, alpha, seed, min_size=min_size)
    raise ValueError(f"unknown partitioner {scheme!r}; known: {', '.join(PARTITIONERS)}")
