"""Aggregation properties: hierarchical merge equals flat FedAvg; order and bad updates change nothing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedn.aggregation import (
    MetricsAccumulator,
    Partial,
    PartialMerge,
    WeightedMean,
    cast_like,
    get_aggregator,
    merge_metric_summaries,
    merge_partials,
)
from fedn.codec import manifest_of
from fedn.errors import InvalidArgument, InvalidModel, NonFiniteValues

SHAPES = {"layer.w": (7, 5), "layer.b": (5,), "scale": ()}


def _updates(seed: int, n: int) -> tuple[list[dict], list[float]]:
    rng = np.random.default_rng(seed)
    updates = [
        {k: (rng.standard_normal(s) * rng.uniform(0.1, 100)).astype(np.float32) for k, s in SHAPES.items()}
        for _ in range(n)
    ]
    weights = [float(rng.integers(1, 1000)) for _ in range(n)]
    return updates, weights


def _flat_fedavg(updates, weights):
    total = sum(weights)
    return {k: sum(u[k].astype(np.float64) * w for u, w in zip(updates, weights, strict=True)) / total for k in SHAPES}


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 40), groups=st.integers(1, 8))
def test_hierarchical_equals_flat_fedavg(seed, n, groups):
    updates, weights = _updates(seed, n)
    rng = np.random.default_rng(seed + 1)
    assignment = rng.integers(0, groups, size=n)
    partials = []
    for g in range(groups):
        members = [i for i in range(n) if assignment[i] == g]
        if not members:
            continue
        acc = WeightedMean(manifest_of(updates[0]))
        for i in members:
            acc.add(updates[i], weights[i])
        partials.append(acc.partial())
    merged = merge_partials(partials)
    expected = _flat_fedavg(updates, weights)
    assert merged.count == n
    assert merged.total_weight == pytest.approx(sum(weights))
    for k in SHAPES:
        np.testing.assert_allclose(merged.arrays[k], expected[k], rtol=1e-6, atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_order_does_not_matter(seed):
    updates, weights = _updates(seed, 12)
    a, b = WeightedMean(manifest_of(updates[0])), WeightedMean(manifest_of(updates[0]))
    for u, w in zip(updates, weights, strict=True):
        a.add(u, w)
    for u, w in reversed(list(zip(updates, weights, strict=True))):
        b.add(u, w)
    for k in SHAPES:
        np.testing.assert_allclose(a.partial().arrays[k], b.partial().arrays[k], rtol=1e-12)


def test_large_model_folds_in_slices():
    rng = np.random.default_rng(0)
    big = [{"w": rng.standard_normal(300_001).astype(np.float32)} for _ in range(3)]
    acc = WeightedMean(manifest_of(big[0]))
    for i, u in enumerate(big):
        acc.add(u, i + 1.0)
    expected = sum(u["w"].astype(np.float64) * (i + 1) for i, u in enumerate(big)) / 6.0
    np.testing.assert_allclose(acc.partial().arrays["w"], expected, rtol=1e-12)


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        ({"layer.w": np.zeros((7, 5), np.float32), "layer.b": np.zeros(5, np.float32)}, InvalidModel),
        (
            {
                "layer.w": np.zeros((5, 7), np.float32),
                "layer.b": np.zeros(5, np.float32),
                "scale": np.zeros((), np.float32),
            },
            InvalidModel,
        ),
        (
            {
                "layer.w": np.full((7, 5), np.nan, np.float32),
                "layer.b": np.zeros(5, np.float32),
                "scale": np.zeros((), np.float32),
            },
            NonFiniteValues,
        ),
    ],
)
def test_rejected_update_leaves_the_aggregate_unchanged(bad, error):
    updates, weights = _updates(3, 4)
    acc = WeightedMean(manifest_of(updates[0]))
    for u, w in zip(updates, weights, strict=True):
        acc.add(u, w)
    before = acc.partial()
    with pytest.raises(error):
        acc.add(bad, 10.0)
    with pytest.raises(InvalidArgument):
        acc.add(updates[0], 0.0)
    after = acc.partial()
    assert after.count == before.count and after.total_weight == before.total_weight
    for k in SHAPES:
        np.testing.assert_array_equal(after.arrays[k], before.arrays[k])


def test_unknown_aggregator_names_known_ones():
    assert get_aggregator("fedavg") is WeightedMean
    with pytest.raises(InvalidArgument, match="fedavg"):
        get_aggregator("fedmagic")


def test_merge_requires_a_partial():
    with pytest.raises(InvalidArgument):
        merge_partials([])
    with pytest.raises(InvalidArgument):
        PartialMerge(manifest_of({"w": np.zeros(3, np.float32)})).finish()


def _group_partials(seed: int, n: int, groups: int) -> tuple[list[Partial], dict]:
    updates, weights = _updates(seed, n)
    partials = []
    for g in range(groups):
        acc = WeightedMean(manifest_of(updates[0]))
        for i in range(g, n, groups):
            acc.add(updates[i], weights[i])
        partials.append(acc.partial())
    return partials, _flat_fedavg(updates, weights)


def test_float64_partials_of_a_float32_model_merge_to_flat_fedavg():
    partials, expected = _group_partials(3, 48, 8)
    model = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}  # the global model's dtypes
    merge = PartialMerge(manifest_of(model))
    for p in partials:
        merge.add(p)
    merged = merge.finish()
    assert merge.count == merged.count == 48
    for k in SHAPES:
        np.testing.assert_allclose(merged.arrays[k], expected[k], rtol=1e-6, atol=1e-9)


def test_a_partial_that_does_not_fit_the_global_model_is_refused_and_changes_nothing():
    partials, _ = _group_partials(4, 12, 3)
    model = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    wrong = Partial({**partials[0].arrays, "layer.b": np.zeros(6)}, 5.0, 4)
    merge = PartialMerge(manifest_of(model))
    with pytest.raises(InvalidModel, match=r"layer\.b"):
        merge.add(wrong)  # refused even as the first partial: the global model sets the shapes
    for p in partials:
        merge.add(p)
    assert merge.count == 12
    np.testing.assert_allclose(merge.finish().arrays["scale"], merge_partials(partials).arrays["scale"])

    without_like = PartialMerge()  # the first partial sets the shapes
    without_like.add(partials[0])
    with pytest.raises(InvalidModel, match=r"layer\.b"):
        without_like.add(wrong)
    assert without_like.count == 4


def test_cast_like_restores_dtypes_and_rounds_integers():
    like = {"w": np.zeros(2, np.float32), "n": np.zeros((), np.int64)}
    out = cast_like({"w": np.array([0.5, 1.5]), "n": np.array(2.6)}, like)
    assert out["w"].dtype == np.float32 and out["n"].dtype == np.int64 and int(out["n"]) == 3


def test_cast_like_clips_to_the_target_range():
    like = {
        "u8": np.zeros(4, np.uint8),
        "i8": np.zeros(2, np.int8),
        "i64": np.zeros(2, np.int64),
        "flag": np.zeros(3, np.bool_),
        "h": np.zeros(3, np.float16),
        "f": np.zeros(2, np.float32),
    }
    out = cast_like(
        {
            "u8": np.array([-1.0, 255.4, 300.0, 7.6]),
            "i8": np.array([200.0, -200.0]),
            "i64": np.array([1e19, -1e19]),
            "flag": np.array([-1.0, 0.7, 2.0]),
            "h": np.array([7e4, -7e4, 65519.0]),
            "f": np.array([1e39, -1e300]),
        },
        like,
    )
    assert {k: v.dtype for k, v in out.items()} == {k: v.dtype for k, v in like.items()}
    assert out["u8"].tolist() == [0, 255, 255, 8]  # no wrap-around: -1 is 0, not 255
    assert out["i8"].tolist() == [127, -128]
    assert out["i64"][0] > 2**62 and out["i64"][1] == np.iinfo(np.int64).min
    assert out["flag"].tolist() == [False, True, True]
    assert out["h"].tolist() == [65504.0, -65504.0, 65504.0]  # finite stays finite
    f32 = float(np.finfo(np.float32).max)
    assert out["f"].tolist() == [f32, -f32]


def test_metric_summaries_merge_like_flat():
    values = [(0.5, 10.0), (1.5, 30.0), (3.0, 60.0)]
    flat = MetricsAccumulator()
    for v, w in values:
        flat.add({"loss": v}, w)
    left, right = MetricsAccumulator(), MetricsAccumulator()
    left.add({"loss": values[0][0]}, values[0][1])
    for v, w in values[1:]:
        right.add({"loss": v, "bad": float("nan")}, w)
    merged = merge_metric_summaries([(left.summary(), 10.0), (right.summary(), 90.0)])
    want = flat.summary()["loss"]
    assert merged["loss"].mean == pytest.approx(want.mean)
    assert (merged["loss"].min, merged["loss"].max, merged["loss"].count) == (0.5, 3.0, 3)
    assert "bad" not in merged


def test_updates_fold_by_name_whatever_their_order():
    updates, weights = _updates(5, 2)
    acc = WeightedMean(manifest_of(updates[0]))
    acc.add(updates[0], weights[0])
    acc.add(dict(reversed(list(updates[1].items()))), weights[1])
    expected = _flat_fedavg(updates, weights)
    for k in SHAPES:
        np.testing.assert_allclose(acc.partial().arrays[k], expected[k], rtol=1e-9)


def test_finish_equals_partial_and_spends_the_accumulator():
    import numpy as np
    import pytest

    from fedn.aggregation import WeightedMean
    from fedn.codec import manifest_of
    from fedn.errors import InvalidArgument

    rng = np.random.default_rng(3)
    updates = [{"a": rng.standard_normal((3, 4)).astype(np.float32)} for _ in range(4)]
    acc = WeightedMean(manifest_of(updates[0]))
    for i, u in enumerate(updates):
        acc.add(u, float(i + 1))
    expected = acc.partial()
    done = acc.finish()
    assert np.array_equal(done.arrays["a"], expected.arrays["a"])
    assert (done.total_weight, done.count) == (expected.total_weight, expected.count)
    with pytest.raises((InvalidArgument, KeyError)):
        acc.add(updates[0], 1.0)


@pytest.mark.parametrize(
    "bad",
    [
        {"a": None},  # np.dtype(None) is float64: a missing tensor must not pass as float64
        {"a": np.zeros((2, 2), np.float32)},  # the dtype differs
        {"a": np.zeros(4, np.float64)},  # the shape differs
        {"a": np.zeros((2, 2)), "b": np.zeros(1)},  # one tensor too many
        {"b": np.zeros((2, 2))},  # the name differs
    ],
)
def test_an_update_unlike_the_manifest_is_refused_by_name_shape_and_dtype(bad):
    acc = WeightedMean(manifest_of({"a": np.zeros((2, 2))}))
    acc.add({"a": np.ones((2, 2))}, 1.0)
    with pytest.raises(InvalidModel):
        acc.add(bad, 1.0)
    assert acc.count == 1
    np.testing.assert_array_equal(acc.partial().arrays["a"], np.ones((2, 2)))


@pytest.mark.parametrize("weight", ["3", None, float("nan"), float("inf"), -1, 0, np.float32("nan")])
def test_a_weight_that_is_not_a_positive_finite_number_is_refused(weight):
    acc = WeightedMean(manifest_of({"a": np.zeros(3)}))
    with pytest.raises(InvalidArgument):
        acc.add({"a": np.ones(3)}, weight)
    with pytest.raises(InvalidArgument):
        acc.add({"a": np.ones(3)}, 1.0, scale=weight)
    assert acc.count == 0
    acc.add({"a": np.ones(3)}, np.int64(2))  # numpy numbers are numbers
    acc.add({"a": np.zeros(3)}, np.float32(2.0))
    np.testing.assert_array_equal(acc.partial().arrays["a"], np.full(3, 0.5))


@pytest.mark.parametrize("size", [5, (1 << 18) + 3])  # checked whole, and slice by slice
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_a_non_finite_value_anywhere_is_found(size, value):
    acc = WeightedMean(manifest_of({"a": np.zeros(size, np.float32)}))
    bad = np.zeros(size, np.float32)
    bad[-1] = value
    with pytest.raises(NonFiniteValues):
        acc.add({"a": bad}, 1.0)
    ints = WeightedMean(manifest_of({"a": np.zeros(size, np.int64)}))
    ints.add({"a": np.full(size, 2**62, np.int64)}, 1.0)  # integers are always finite
    assert ints.partial().arrays["a"][-1] == 2.0**62


@settings(max_examples=50, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    weights=st.lists(st.sampled_from([1.0, 3.0, 1000.0, 2.0**-30]), min_size=1, max_size=30),
    peek=st.integers(0, 30),
    base_at=st.integers(0, 30),
)
def test_runs_of_equal_weights_fold_to_flat_fedavg(seed, weights, peek, base_at):
    """Equal weights in a row are summed first and scaled once; a partial taken mid-run, an update
    folded against a base, and a weight change all end the run without changing the mean."""
    updates = [{k: np.asarray(v) for k, v in u.items()} for u in _updates(seed, len(weights))[0]]  # 0-d arrays too
    acc = WeightedMean(manifest_of(updates[0]))
    zeros = {k: np.zeros(s, np.float32) for k, s in SHAPES.items()}
    for i, (u, w) in enumerate(zip(updates, weights, strict=True)):
        if i == base_at:
            acc.add(u, w, base=zeros)  # the same update as a delta from zero: the other path
        else:
            acc.add(u, w)
        if i == peek:
            middle = acc.partial()
            expected = _flat_fedavg(updates[: i + 1], weights[: i + 1])
            for k in SHAPES:
                np.testing.assert_allclose(middle.arrays[k], expected[k], rtol=1e-9, atol=1e-9)
    expected = _flat_fedavg(updates, weights)
    done = acc.finish()
    assert done.count == len(weights) and done.total_weight == sum(weights)
    for k in SHAPES:
        np.testing.assert_allclose(done.arrays[k], expected[k], rtol=1e-9, atol=1e-9)


def test_an_update_refused_mid_run_leaves_the_run_as_it_was():
    updates = [{k: np.asarray(v) for k, v in u.items()} for u in _updates(11, 4)[0]]
    acc = WeightedMean(manifest_of(updates[0]))
    for u in updates[:3]:
        acc.add(u, 5.0)
    bad = {**updates[3], "layer.b": np.full(5, np.nan, np.float32)}
    with pytest.raises(NonFiniteValues):
        acc.add(bad, 5.0)
    acc.add(updates[3], 5.0)
    expected = _flat_fedavg(updates, [5.0] * 4)
    for k in SHAPES:
        np.testing.assert_allclose(acc.partial().arrays[k], expected[k], rtol=1e-12)


def test_float64_updates_near_the_largest_value_stay_finite_when_their_weights_keep_them_so():
    """Unscaled sums of equal-weight runs are for narrower dtypes: two float64 updates of 1e308 at
    weight 0.5 each sum to 1e308, not to an overflowed run of 2e308 halved."""
    acc = WeightedMean(manifest_of({"a": np.zeros(3)}))
    for _ in range(2):
        acc.add({"a": np.full(3, 1e308)}, 0.5)
    np.testing.assert_array_equal(acc.partial().arrays["a"], np.full(3, 1e308))
    wide = WeightedMean(manifest_of({"a": np.zeros(3, np.float32)}))
    for _ in range(4):  # float32's largest values sum far inside float64's range
        wide.add({"a": np.full(3, np.finfo(np.float32).max, np.float32)}, 0.5)
    np.testing.assert_allclose(wide.partial().arrays["a"], float(np.finfo(np.float32).max))
