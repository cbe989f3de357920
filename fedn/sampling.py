"""Client sampling: how many clients each combiner asks to train, in proportion to what it holds."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import TypeVar

import numpy as np

__all__ = ["allocate_sample", "sample_seed", "sample_size", "seeded_uniforms", "select_clients"]

T = TypeVar("T")


def sample_size(total: int, fraction: float, minimum: int) -> int:
    """Clients to ask this round: ``ceil(fraction · total)``, at least ``minimum``, at most ``total``.

    A product within float rounding of a whole number is that number: ``0.07 * 100`` is
    ``7.000000000000001`` in floats, and 7% of 100 clients is 7, not 8.
    """
    exact = fraction * total
    whole = round(exact)
    wanted = whole if math.isclose(exact, whole, rel_tol=1e-12) else math.ceil(exact)
    return min(total, max(minimum, wanted))


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
    """``k`` of ``candidates`` (all if ``k`` is 0 or covers them), sorted; the same for the same seed.

    An ascending ``range`` is drawn from in place, never listed: ``random.Random.sample`` indexes its
    population and, for ``k`` small against ``len(candidates)``, keeps only a set of the ``k`` picks,
    so 1000 of a million cost O(k) memory and give what the same ids in a list give.
    """
    ordered: Sequence = candidates if _ascending_range(candidates) else sorted(candidates)
    if k <= 0 or len(ordered) <= k:
        return list(ordered)
    return sorted(random.Random(seed).sample(ordered, k))


def _ascending_range(candidates: Sequence) -> bool:
    return isinstance(candidates, range) and candidates.step > 0


def seeded_uniforms(seed: Sequence[int], positions: Sequence[int], total: int) -> np.ndarray:
    """``np.random.default_rng(seed).random(total)[positions]`` without drawing ``total`` numbers.

    ``positions`` must ascend and lie in ``range(total)``. Each uniform takes one 64-bit output of
    PCG64, so the generator is advanced past the gaps (O(log gap) each) when the positions are sparse;
    a dense set is drawn whole. Either way the numbers are the same: a draw per client of a million
    costs what the sampled clients cost.
    """
    picks = np.asarray(positions, dtype=np.int64)
    if len(picks) and (picks[0] < 0 or picks[-1] >= total or np.any(np.diff(picks) <= 0)):
        raise ValueError(f"positions must ascend strictly within 0..{total - 1}")
    rng = np.random.default_rng(list(seed))
    if len(picks) * 16 >= total:
        return rng.random(total)[picks]
    out = np.empty(len(picks))
    generator, bits, at = rng, rng.bit_generator, 0
    for i, position in enumerate(picks.tolist()):
        bits.advance(position - at)
        out[i] = generator.random()
        at = position + 1
    return out
