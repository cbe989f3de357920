"""FedBuff arithmetic: staleness weights, folding deltas from a base, and the session option checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedn.aggregation import WeightedMean, staleness_weight
from fedn.codec import manifest_of
from fedn.errors import InvalidArgument
from fedn.session_options import check_session_options


def test_staleness_weight_is_one_over_root_one_plus_s_by_default():
    assert [staleness_weight(s) for s in (0, 1, 3, 8)] == pytest.approx([1, 1 / math.sqrt(2), 0.5, 1 / 3])
    assert staleness_weight(5, 0.0) == 1.0
    assert staleness_weight(3, 1.0) == pytest.approx(0.25)
    with pytest.raises(InvalidArgument):
        staleness_weight(-1)
    with pytest.raises(InvalidArgument):
        staleness_weight(1, -0.5)


def test_folding_deltas_from_different_bases_with_scales():
    rng = np.random.default_rng(3)
    bases = [{"w": rng.standard_normal(300_000).astype(np.float32)} for _ in range(2)]  # spans fold slices
    updates = [{"w": (b["w"] + rng.standard_normal(300_000)).astype(np.float32)} for b in bases]
    acc = WeightedMean(manifest_of(updates[0]))
    acc.add(updates[0], 10.0, base=bases[0], scale=1.0)
    acc.add(updates[1], 30.0, base=bases[1], scale=0.5)
    deltas = [u["w"].astype(np.float64) - b["w"].astype(np.float64) for u, b in zip(updates, bases, strict=True)]
    expected = (10 * deltas[0] + 30 * 0.5 * deltas[1]) / 40
    np.testing.assert_allclose(acc.partial().arrays["w"], expected, rtol=1e-12, atol=1e-12)
    assert acc.total_weight == 40.0  # the staleness discount is not normalised away


def test_a_bad_base_or_scale_leaves_the_sum_untouched():
    acc = WeightedMean(manifest_of({"w": np.zeros(3, np.float32)}))
    acc.add({"w": np.ones(3, np.float32)}, 1.0)
    with pytest.raises(InvalidArgument):
        acc.add({"w": np.ones(3, np.float32)}, 1.0, base={"w": np.zeros(4, np.float32)})
    for scale in (0.0, -1.0, float("nan")):
        with pytest.raises(InvalidArgument):
            acc.add({"w": np.ones(3, np.float32)}, 1.0, scale=scale)
    assert acc.count == 1 and acc.partial().arrays["w"].tolist() == [1.0, 1.0, 1.0]


def _check(**changes):
    options = {
        "aggregator": "fedavg",
        "aggregator_params": {},
        "strategy": "fedavg",
        "strategy_params": {},
        "min_clients": 1,
        **changes,
    }
    check_session_options(**options)


def test_session_option_combinations():
    _check(mode="async", given={"buffer_size"}, strategy="fedadam", strategy_params={"eta": 0.01})
    with pytest.raises(InvalidArgument, match="mode sync"):
        _check(mode="async", aggregator="median")
    with pytest.raises(InvalidArgument, match="buffer_size only apply to mode async"):
        _check(given={"buffer_size"})
    with pytest.raises(InvalidArgument, match="krum"):
        _check(aggregator="krum", aggregator_params={"f": 1}, min_clients=3)
