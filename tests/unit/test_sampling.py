"""Client sampling: sizes, proportional shares across combiners, reproducible seeds."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fedn.sampling import allocate_sample, sample_seed, sample_size


def test_sample_size():
    assert sample_size(100, 0.1, 1) == 10
    assert sample_size(100, 0.101, 1) == 11
    assert sample_size(10, 0.1, 3) == 3
    assert sample_size(2, 0.5, 5) == 2


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.text(min_size=1, max_size=4), st.integers(0, 50), min_size=1, max_size=6), st.integers(0, 300)
)
def test_allocation_is_proportional_bounded_and_complete(counts, k):
    shares = allocate_sample(counts, k)
    total = sum(counts.values())
    assert set(shares) == set(counts)
    assert sum(shares.values()) == min(k, total)
    assert all(0 <= shares[c] <= counts[c] for c in counts)
    if total and k <= total:
        for c, n in counts.items():  # within one of the exact proportional share, unless capped
            assert abs(shares[c] - k * n / total) < 1 + 1e-9 or shares[c] == n
    assert allocate_sample(counts, k) == shares


def test_allocation_example_and_seeds():
    assert allocate_sample({"a": 30, "b": 10}, 8) == {"a": 6, "b": 2}
    assert allocate_sample({"a": 1, "b": 1, "c": 1}, 2) == {"a": 1, "b": 1, "c": 0}
    assert sample_seed(7, 3) == sample_seed(7, 3) != sample_seed(7, 4)
