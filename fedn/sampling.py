"""Client sampling: how many clients each combiner asks to train, in proportion to what it holds."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import TypeVar

__all__ = ["allocate_sample", "sample_seed", "sample_size", "select_clients"]

T = TypeVar("T")


def sample_size(total: int, fraction: float, minimum: int) -> int:
    """Clients to ask this round: ``ceil(fraction · total)``, at least ``minimum``, at most ``total``."""
    return min(total, max(minimum, math.ceil(fraction * total)))


def allocate_sample(counts: Mapping[str, int], k: int) -> dict[str, int]:
    """Split ``k`` over combiners in proportion to ``counts`` (largest remainder, ties by id).

    Deterministic; every share is at most the combiner's count, and the shares add up to
    ``min(k, sum(counts))``.
    """
    total = sum(counts.values())
    k = min(k, total)
    if total == 0 or k == 0:
        return dict.fromkeys(counts, 0)
    exact = {cid: k * n / total for cid, n in counts.items()}
    shares = {cid: min(counts[cid], math.floor(x)) for cid, x in exact.items()}
    order = sorted(counts, key=lambda cid: (-(exact[cid] - math.floor(exact[cid])), cid))
    while sum(shares.values()) < k:
        for cid in order:
            if sum(shares.values()) >= k:
                break
            if shares[cid] < counts[cid]:
                shares[cid] += 1
    return shares


def sample_seed(session_seed: int, round_index: int) -> int:
    """One seed per round of a session, the same on every run with the same session seed."""
    return (session_seed * 1_000_003 + round_index) % (2**63)


def select_clients(candidates: Sequence[T], k: int, seed: int) -> list[T]:
    """``k`` of ``candidates`` (all if ``k`` is 0 or covers them), sorted; the same for the same seed."""
    ordered = sorted(candidates)
    if k <= 0 or len(ordered) <= k:
        return ordered
    return sorted(random.Random(seed).sample(ordered, k))
