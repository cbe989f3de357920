"""Robust rules under attack: with a share of updates replaced by large or sign-flipped vectors,
median, trimmed mean and Krum stay near the honest mean while FedAvg does not."""

from __future__ import annotations

import numpy as np
import pytest

from fedn.aggregation import aggregator_config, make_aggregator
from fedn.codec import manifest_of
from fedn.errors import InvalidArgument, PayloadTooLarge

SHAPES = {"w": (20, 5), "b": (5,)}
MANIFEST = manifest_of({k: np.zeros(s, np.float32) for k, s in SHAPES.items()})


def _honest(rng, n):
    center = {k: np.ones(s, np.float32) for k, s in SHAPES.items()}
    return [
        {k: (v + 0.1 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in center.items()} for _ in range(n)
    ], center


def _attack(kind, honest_update):
    if kind == "large":
        return {k: np.full_like(v, 1e4) for k, v in honest_update.items()}
    return {k: -10.0 * v for k, v in honest_update.items()}  # sign flip, amplified


def _error(partial, center) -> float:
    return max(float(np.abs(partial.arrays[k] - center[k]).max()) for k in center)


@pytest.mark.parametrize("attack", ["large", "sign_flip"])
@pytest.mark.parametrize(
    ("rule", "config"),
    [("median", {}), ("trimmed_mean", {"beta": 0.3}), ("krum", {"f": 3}), ("krum", {"f": 3, "m": 4})],
)
def test_robust_rules_resist_a_minority_while_fedavg_does_not(rule, config, attack):
    rng = np.random.default_rng(0)
    honest, center = _honest(rng, 7)
    bad = [_attack(attack, honest[i]) for i in range(3)]  # 3 of 10 are Byzantine
    updates = honest + bad
    robust, fedavg = make_aggregator(rule, MANIFEST, config), make_aggregator("fedavg", MANIFEST)
    for u in updates:
        robust.add(u, 10.0)
        fedavg.add(u, 10.0)
    assert _error(robust.partial(), center) < 0.5
    assert _error(fedavg.partial(), center) > 3.0
    assert robust.partial().total_weight == 100.0 and robust.partial().count == 10


def test_rules_equal_the_mean_on_identical_updates():
    same = {k: np.full(s, 2.5, np.float32) for k, s in SHAPES.items()}
    for rule, config in [("median", {}), ("trimmed_mean", {"beta": 0.2}), ("krum", {"f": 1, "m": 2})]:
        agg = make_aggregator(rule, MANIFEST, config)
        for _ in range(5):
            agg.add(same, 1.0)
        np.testing.assert_allclose(agg.partial().arrays["w"], 2.5)


def test_buffer_limit_and_krum_minimum_are_clear_errors():
    agg = make_aggregator("median", MANIFEST, {"max_updates": 2})
    u = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    agg.add(u, 1.0)
    agg.add(u, 1.0)
    with pytest.raises(PayloadTooLarge, match="at most 2 updates"):
        agg.add(u, 1.0)
    krum = make_aggregator("krum", MANIFEST, {"f": 2})
    for _ in range(6):
        krum.add(u, 1.0)
    with pytest.raises(InvalidArgument, match="at least 7"):
        krum.partial()


@pytest.mark.parametrize(
    ("rule", "config", "match"),
    [
        ("trimmed_mean", {"beta": 0.5}, "beta"),
        ("krum", {"f": -1}, "f"),
        ("krum", {"m": 0}, "m"),
        ("median", {"beta": 0.1}, "beta"),
        ("fedavg", {"anything": 1}, "anything"),
        ("nope", {}, "unknown"),
    ],
)
def test_bad_aggregator_configs(rule, config, match):
    with pytest.raises(InvalidArgument, match=match):
        aggregator_config(rule, config)


_RULES = [("median", {}), ("trimmed_mean", {"beta": 0.2}), ("krum", {"f": 1}), ("krum", {"f": 1, "m": 3})]


def _run_rule(rule, config, updates):
    agg = make_aggregator(rule, manifest_of(updates[0]), config)
    for u in updates:
        agg.add(u, 1.0)
    return agg.partial().arrays


@pytest.mark.parametrize(("rule", "config"), _RULES)
def test_robust_rules_compute_in_float64(rule, config):
    # five identical updates: every rule must return them to float64 precision (a mean of equal values
    # may be off by an ulp), which float32 cannot hold
    same = {
        "fine": np.array([1.0 + 1e-12, -3.0 - 2e-13, np.pi]),  # float64 digits float32 rounds away
        "huge": np.array([1e300, -1.7e308, 3.5e38]),  # finite float64 that float32 makes inf
        "count": np.array([2**24 + 1, 2**40 + 3, -(2**52) - 1], dtype=np.int64),  # int64 float32 rounds
    }
    got = _run_rule(rule, config, [same] * 5)
    for name, want in same.items():
        assert got[name].dtype == np.float64
        np.testing.assert_allclose(got[name], want.astype(np.float64), rtol=1e-15, atol=0, err_msg=name)


@pytest.mark.parametrize(("rule", "config"), _RULES)
def test_robust_rules_stay_finite_and_precise_near_float64_limits(rule, config):
    rng = np.random.default_rng(1)
    base = rng.uniform(-1, 1, (6, 4))
    updates = [{"w": 1.5e308 + 1e292 * row} for row in base]  # sums of two of them overflow float64
    got = _run_rule(rule, config, updates)["w"]
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, 1.5e308, rtol=1e-15)
    # updates far from the origin but close to each other: Krum must still rank them by distance
    center = np.full(50, 1e8)
    close = [{"w": center + 1e-6 * rng.standard_normal(50)} for _ in range(5)]
    far = {"w": center + 1.0}
    got = _run_rule(rule, config, [*close, far])["w"]
    assert np.abs(got - center).max() < 1e-4


def test_multi_krum_refuses_m_above_n_minus_f():
    u = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    krum = make_aggregator("krum", MANIFEST, {"f": 1, "m": 5})
    for _ in range(5):
        krum.add(u, 1.0)
    with pytest.raises(InvalidArgument, match=r"m=5 .*n - f = 4"):
        krum.partial()
    krum.add(u, 1.0)  # n = 6: m = 5 = n - f is allowed
    np.testing.assert_array_equal(krum.partial().arrays["w"], 0.0)
    # what can be known before any update: m + f may not exceed max_updates
    with pytest.raises(InvalidArgument, match="max_updates"):
        aggregator_config("krum", {"f": 2, "m": 9, "max_updates": 10})
    aggregator_config("krum", {"f": 2, "m": 8, "max_updates": 10})
