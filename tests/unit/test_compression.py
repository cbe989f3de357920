"""Compressed updates: each codec within its stated bound, clear errors on malformed payloads,
error feedback keeps what compression lost, and a fold of lazy tensors equals the dense fold."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedn.aggregation.weighted_mean import WeightedMean
from fedn.codec import TensorSpec, check_finite, encode_payload, flat_slices, manifest_of
from fedn.compression import (
    CODECS,
    CompressedTensor,
    Compression,
    compressed_payload_bytes,
    decode_model_downlink,
    decode_update,
    downlink_payload_bytes,
    encode_model_downlink,
    encode_update,
    parse_compression,
    section_bytes,
)
from fedn.errors import InvalidArgument, InvalidModel, NonFiniteValues

FLOAT_DTYPES = ("float16", "float32", "float64")
RNG = np.random.default_rng(0)


def _update(seed: int, magnitude: float = 1.0, dtype: str = "float32", shape=(7, 33)) -> tuple[dict, dict]:
    """A base model and a trained one: a float tensor of ``dtype``, an int64 counter, a bool mask."""
    rng = np.random.default_rng(seed)
    base = {
        "w": rng.standard_normal(shape).astype(dtype),
        "steps": np.array([3, 4], dtype=np.int64),
        "mask": np.array([True, False, True]),
    }
    params = {
        "w": (base["w"] + magnitude * rng.standard_normal(shape)).astype(dtype),
        "steps": np.array([5, 9], dtype=np.int64),
        "mask": np.array([False, False, True]),
    }
    return base, params


def _round_trip(params: dict, base: dict, c: Compression, seed: int = 0, residual=None) -> dict[str, np.ndarray]:
    manifest = manifest_of(params)
    payload = encode_update(params, base, manifest, c, rng=np.random.default_rng(seed), residual=residual)
    assert len(payload) == compressed_payload_bytes(manifest, c)
    return {name: t.to_numpy() for name, t in decode_update(payload, base, manifest, c).items()}


# --- options --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", Compression()),
        ("none", Compression()),
        ("float16", Compression(codec="float16")),
        ("int8", Compression(codec="int8")),
        ("int8:block=64,stochastic=false", Compression(codec="int8", block=64, stochastic=False)),
        ("topk:ratio=0.05", Compression(codec="topk", ratio=0.05)),
        ("topk:ratio=0.01,error_feedback=false", Compression(codec="topk", error_feedback=False)),
        ("INT8: block = 0", Compression(codec="int8", block=0)),
        ("topk:ratio=0.01,momentum=0.5", Compression(codec="topk", momentum=0.5)),
    ],
)
def test_parse_compression_text(text: str, expected: Compression) -> None:
    assert parse_compression(text) == expected
    assert parse_compression(expected.text()) == expected


def test_canonical_text_spells_the_main_parameter_and_every_non_default() -> None:
    assert Compression().text() == "none"
    assert Compression(codec="float16").text() == "float16"
    assert Compression(codec="int8").text() == "int8:block=256"
    assert Compression(codec="topk").text() == "topk:ratio=0.01"
    assert Compression(codec="int8", stochastic=False, error_feedback=False).text() == (
        "int8:block=256,stochastic=false,error_feedback=false"
    )
    assert Compression(codec="none", block=8).text() == "none:block=8"
    assert parse_compression(None) == Compression()
    assert parse_compression({"codec": "int8", "block": 64}) == Compression(codec="int8", block=64)
    c = Compression(codec="float16")
    assert parse_compression(c) is c
    assert Compression().lossless and not c.lossless
    assert set(CODECS) == {"none", "float16", "int8", "topk"}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("gzip", "unknown compression codec 'gzip'"),
        ("int8:blocks=4", "unknown compression parameter 'blocks'"),
        ("int8:block", "not name=value"),
        ("int8:block=-1", "block"),
        ("int8:block=1,block=2", "given twice"),
        ("topk:ratio=0", "ratio"),
        ("topk:ratio=1.5", "ratio"),
        ("topk:momentum=1", "momentum"),
        ("topk:momentum=-0.1", "momentum"),
        ("topk:momentum=nan", "momentum"),
        ("int8:momentum=0.5", "momentum applies to topk with error feedback only"),
        ("topk:momentum=0.5,error_feedback=false", "momentum applies to topk with error feedback only"),
        ("int8:stochastic=maybe", "stochastic"),
        ({"codec": "int8", "level": 3}, "level"),
        (42, "text or a mapping"),
    ],
)
def test_bad_compression_options_are_refused_clearly(value: object, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_compression(value)  # type: ignore[arg-type]


# --- error bounds ---------------------------------------------------------------------------------

magnitudes = st.sampled_from([0.0, 1e-30, 1e-6, 1e-3, 1.0, 100.0, 3e4])
shapes = st.sampled_from([(), (1,), (5,), (3, 4), (300,), (2, 257)])


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), magnitude=magnitudes, shape=shapes, dtype=st.sampled_from(FLOAT_DTYPES))
def test_float16_relative_error(seed: int, magnitude: float, shape: tuple, dtype: str) -> None:
    base, params = _update(seed, min(magnitude, 1e3) if dtype == "float16" else magnitude, dtype, shape)
    delta = params["w"].astype(np.float64) - base["w"].astype(np.float64)
    if np.abs(delta).max(initial=0) > 65504:
        with pytest.raises(InvalidArgument, match="beyond float16's range"):
            _round_trip(params, base, Compression(codec="float16"))
        return
    got = _round_trip(params, base, Compression(codec="float16"))
    decoded = got["w"].astype(np.float64) - base["w"].astype(np.float64)
    # float16 bound on the delta (normal range: relative 2**-11; subnormal: absolute 2**-25), plus
    # the float32 rounding of the delta and of base + delta in the tensor's own dtype
    own = np.finfo(dtype).eps
    bound = np.maximum(np.abs(delta) * 2.0**-11, 2.0**-25) + (np.abs(delta) + np.abs(base["w"])) * max(own, 2.0**-23)
    assert (np.abs(decoded - delta) <= bound * 1.01).all()
    np.testing.assert_array_equal(got["steps"], params["steps"])  # carried raw, whole
    np.testing.assert_array_equal(got["mask"], params["mask"])
    assert got["w"].dtype == np.dtype(dtype)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    magnitude=magnitudes,
    shape=shapes,
    block=st.sampled_from([0, 1, 7, 256]),
    stochastic=st.booleans(),
)
def test_int8_error_within_one_scale(seed: int, magnitude: float, shape: tuple, block: int, stochastic: bool) -> None:
    base, params = _update(seed, magnitude, "float64", shape)
    c = Compression(codec="int8", block=block, stochastic=stochastic)
    got = _round_trip(params, base, c, seed)
    delta = (params["w"] - base["w"]).astype(np.float32).astype(np.float64).reshape(-1)
    width = max(delta.size, 1) if block == 0 else block
    padded = np.zeros(-(-delta.size // width) * width)
    padded[: delta.size] = np.abs(delta)
    scale = np.repeat(padded.reshape(-1, width).max(axis=1) / 127, width)[: delta.size]
    error = np.abs(got["w"].reshape(-1) - base["w"].reshape(-1) - delta)
    allowed = scale if stochastic else scale / 2
    assert (error <= allowed * (1 + 1e-5) + 1e-6 * np.abs(delta) + 1e-12).all()
    np.testing.assert_array_equal(got["steps"], params["steps"])


def test_int8_stochastic_rounding_is_unbiased() -> None:
    base = {"w": np.zeros(64, dtype=np.float32)}
    rng = np.random.default_rng(5)
    params = {"w": rng.uniform(-1, 1, 64).astype(np.float32)}
    params["w"][0] = 1.0  # fixes the scale at 1/127, so every other value lies between two codes
    manifest = manifest_of(params)
    c = Compression(codec="int8", block=0)
    draws = 4000
    total = np.zeros(64)
    for seed in range(draws):
        payload = encode_update(params, base, manifest, c, rng=np.random.default_rng(seed))
        total += decode_update(payload, base, manifest, c)["w"].to_numpy()
    mean_error = total / draws - params["w"]
    # one draw errs by up to a scale (1/127); the mean of 4000 by about scale / 2 / sqrt(4000)
    assert np.abs(mean_error).max() < 0.0015
    nearest = Compression(codec="int8", block=0, stochastic=False)
    biased = decode_update(encode_update(params, base, manifest, nearest, rng=rng), base, manifest, nearest)
    assert np.abs(biased["w"].to_numpy() - params["w"]).max() <= 0.5 / 127 + 1e-7


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), shape=shapes, ratio=st.sampled_from([0.001, 0.01, 0.1, 0.5, 1.0]))
def test_topk_keeps_the_largest_entries_exactly(seed: int, shape: tuple, ratio: float) -> None:
    base, params = _update(seed, 1.0, "float32", shape)
    got = _round_trip(params, base, Compression(codec="topk", ratio=ratio))
    delta = (params["w"] - base["w"]).reshape(-1)
    decoded = (got["w"] - base["w"]).reshape(-1)
    n = delta.size
    k = min(n, max(1, int(np.ceil(ratio * n))))
    kept = np.flatnonzero(decoded != 0)
    assert kept.size <= k
    np.testing.assert_allclose(decoded[kept], delta[kept], rtol=0, atol=1e-6)
    dropped = np.setdiff1d(np.arange(n), kept)
    if kept.size and dropped.size:
        assert np.abs(delta[dropped]).max() <= np.abs(delta[kept]).min() + 1e-6
    assert section_bytes(TensorSpec("w", "float32", tuple(shape)), Compression(codec="topk", ratio=ratio)) == 8 * k


@pytest.mark.parametrize("codec", ["float16", "int8", "topk"])
def test_error_feedback_carries_the_residual(codec: str) -> None:
    """Sum of decoded deltas over rounds + the final residual == sum of the true deltas."""
    c = parse_compression({"codec": codec, "ratio": 0.05})
    rng = np.random.default_rng(3)
    base = {"w": np.zeros((40, 25), dtype=np.float32), "n": np.zeros(2, dtype=np.int64)}
    manifest = manifest_of(base)
    residual: dict[str, np.ndarray] = {}
    true_sum = np.zeros((40, 25))
    decoded_sum = np.zeros((40, 25))
    for _ in range(12):
        params = {"w": rng.standard_normal((40, 25)).astype(np.float32), "n": np.ones(2, dtype=np.int64)}
        payload = encode_update(params, base, manifest, c, rng=rng, residual=residual)
        decoded = decode_update(payload, base, manifest, c)["w"].to_numpy()
        true_sum += params["w"]
        decoded_sum += decoded
    assert residual["w"].dtype == np.float32 and residual["w"].shape == (40, 25)
    assert "n" not in residual  # integer tensors travel raw: nothing is lost
    np.testing.assert_allclose(decoded_sum + residual["w"], true_sum, atol=1e-4)
    if codec == "topk":
        assert np.abs(residual["w"]).max() > 0.1  # most of each delta waits in the residual


def test_momentum_correction_keeps_a_masked_velocity() -> None:
    """velocity = m * velocity + delta is added to the residual; both are zeroed where an entry is sent."""
    c = parse_compression("topk:ratio=0.1,momentum=0.5")
    base = {"w": np.zeros(20, dtype=np.float32)}
    manifest = manifest_of(base)
    residual: dict[str, np.ndarray] = {}
    velocity: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(5)
    u_expected, r_expected = np.zeros(20, np.float32), np.zeros(20, np.float32)
    for _ in range(6):
        delta = rng.standard_normal(20).astype(np.float32)
        payload = encode_update(
            {"w": delta}, base, manifest, c, rng=np.random.default_rng(0), residual=residual, velocity=velocity
        )
        sent = decode_update(payload, base, manifest, c)["w"].to_numpy()
        u_expected = np.float32(0.5) * u_expected + delta
        x = u_expected + r_expected
        top = np.sort(np.argsort(-np.abs(x))[:2])  # k = ceil(0.1 * 20) = 2
        assert np.flatnonzero(sent).tolist() == top.tolist()
        np.testing.assert_allclose(sent[top], x[top], rtol=1e-6)
        r_expected, u_expected = x.copy(), u_expected.copy()
        r_expected[top] = 0
        u_expected[top] = 0
        np.testing.assert_allclose(residual["w"], r_expected, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(velocity["w"], u_expected, rtol=1e-6, atol=1e-7)


def test_momentum_zero_is_plain_error_feedback_and_momentum_needs_its_state() -> None:
    base, params = _update(4)
    manifest = manifest_of(params)
    plain, plain_residual = Compression(codec="topk", ratio=0.05), {}
    zero, zero_residual, zero_velocity = Compression(codec="topk", ratio=0.05, momentum=0.0), {}, {}
    a = encode_update(params, base, manifest, plain, rng=np.random.default_rng(0), residual=plain_residual)
    b = encode_update(
        params, base, manifest, zero, rng=np.random.default_rng(0), residual=zero_residual, velocity=zero_velocity
    )
    assert a == b and not zero_velocity
    np.testing.assert_array_equal(plain_residual["w"], zero_residual["w"])
    with pytest.raises(InvalidArgument, match="velocity"):
        encode_update(
            params, base, manifest, parse_compression("topk:momentum=0.9"), rng=np.random.default_rng(0), residual={}
        )
    with pytest.raises(InvalidArgument, match="velocity of tensor 'w' has shape"):
        encode_update(
            params,
            base,
            manifest,
            parse_compression("topk:momentum=0.9"),
            rng=np.random.default_rng(0),
            residual={},
            velocity={"w": np.zeros(3, np.float32)},
        )


def test_error_feedback_off_leaves_the_residual_alone() -> None:
    base, params = _update(1)
    residual = {"w": np.ones((7, 33), dtype=np.float32)}
    c = Compression(codec="topk", error_feedback=False)
    with_residual = encode_update(params, base, manifest_of(params), c, rng=np.random.default_rng(0), residual=residual)
    without = encode_update(params, base, manifest_of(params), c, rng=np.random.default_rng(0))
    assert with_residual == without
    np.testing.assert_array_equal(residual["w"], 1.0)


def test_none_is_the_raw_payload() -> None:
    base, params = _update(2)
    manifest = manifest_of(params)
    payload = encode_update(params, base, manifest, Compression(), rng=np.random.default_rng(0))
    assert payload == encode_payload(params)[1]
    got = decode_update(payload, base, manifest, Compression())
    for name, value in params.items():
        np.testing.assert_array_equal(got[name].to_numpy(), value)


def test_layout_sizes() -> None:
    spec = TensorSpec("w", "float32", (1000,))
    assert section_bytes(spec, Compression()) == 4000
    assert section_bytes(spec, Compression(codec="float16")) == 2000
    assert section_bytes(spec, Compression(codec="int8")) == 4 * 4 + 1000
    assert section_bytes(spec, Compression(codec="int8", block=0)) == 4 + 1000
    assert section_bytes(spec, Compression(codec="topk")) == 8 * 10
    counter = TensorSpec("n", "int64", (3,))
    assert section_bytes(counter, Compression(codec="topk")) == 24  # raw
    empty = TensorSpec("e", "float32", (0, 4))
    assert all(section_bytes(empty, parse_compression(codec)) == 0 for codec in CODECS)


def test_float16_refuses_a_delta_beyond_its_range() -> None:
    base = {"w": np.zeros(3, dtype=np.float32)}
    params = {"w": np.array([1.0, 7e4, 0.0], dtype=np.float32)}
    with pytest.raises(InvalidArgument, match=r"'w'.*beyond float16's range"):
        encode_update(params, base, manifest_of(params), Compression(codec="float16"), rng=np.random.default_rng(0))


@pytest.mark.parametrize("codec", ["float16", "int8", "topk"])
def test_non_finite_updates_are_refused_when_encoding(codec: str) -> None:
    base = {"w": np.zeros(300, dtype=np.float32)}
    params = {"w": np.ones(300, dtype=np.float32)}
    params["w"][17] = np.nan
    with pytest.raises(NonFiniteValues, match="'w'"):
        encode_update(params, base, manifest_of(params), parse_compression(codec), rng=np.random.default_rng(0))


def test_encode_refuses_a_base_that_does_not_fit() -> None:
    base, params = _update(4)
    with pytest.raises(InvalidModel, match="base model tensor 'w' has shape"):
        encode_update(params, {**base, "w": np.zeros(3)}, manifest_of(params), Compression(codec="int8"), rng=RNG)
    c = Compression(codec="float16")
    payload = encode_update(params, base, manifest_of(params), c, rng=RNG)
    with pytest.raises(InvalidModel, match="base model has no tensor 'w'"):
        decode_update(payload, {}, manifest_of(params), c)


# --- malformed payloads ---------------------------------------------------------------------------


def _payload(codec: str) -> tuple[bytearray, dict, list[TensorSpec], Compression]:
    base = {"w": np.zeros(1000, dtype=np.float32)}
    params = {"w": np.linspace(-1, 1, 1000, dtype=np.float32)}
    c = parse_compression(codec)
    manifest = manifest_of(params)
    return bytearray(encode_update(params, base, manifest, c, rng=np.random.default_rng(0))), base, manifest, c


@pytest.mark.parametrize("codec", CODECS)
def test_truncated_or_extended_payloads_name_the_sizes(codec: str) -> None:
    payload, base, manifest, c = _payload(codec)
    expected = len(payload)
    for bad in (payload[:-1], payload + b"\0", b""):
        with pytest.raises(InvalidModel, match=f"should have {expected} bytes, got {len(bad)}"):
            decode_update(bytes(bad), base, manifest, c)


def _poke(payload: bytearray, offset: int, value: np.ndarray) -> bytes:
    raw = value.tobytes()
    payload[offset : offset + len(raw)] = raw
    return bytes(payload)


@pytest.mark.parametrize(
    ("codec", "offset", "value", "error", "message"),
    [
        ("int8", 0, np.float32(np.nan), NonFiniteValues, "'w': its int8 scales"),
        ("int8", 4, np.float32(np.inf), NonFiniteValues, "'w': its int8 scales"),
        ("int8", 8, np.float32(-1.0), InvalidModel, "negative"),
        ("int8", 8, np.float32(3e38), InvalidModel, "beyond float32's range"),
        ("float16", 20, np.float16(np.nan), NonFiniteValues, "'w': its float16 values"),
        ("float16", 0, np.float16(-np.inf), NonFiniteValues, "'w': its float16 values"),
        ("topk", 40 + 4, np.float32(np.inf), NonFiniteValues, "'w': its topk values"),
        ("topk", 4 * 9, np.uint32(1000), InvalidModel, "out of range"),
        ("topk", 4 * 9, np.uint32(2**32 - 1), InvalidModel, "out of range"),
        ("topk", 4, np.uint32(0), InvalidModel, "strictly increasing"),  # repeats index 0
        ("topk", 0, np.uint32(999), InvalidModel, "strictly increasing"),  # unsorted
    ],
)
def test_malformed_payloads_are_refused_clearly(codec, offset, value, error, message) -> None:
    payload, base, manifest, c = _payload(codec)
    with pytest.raises(error, match=message):
        decode_update(_poke(payload, offset, np.asarray(value)), base, manifest, c)


def test_a_memory_mapped_spool_decodes(tmp_path) -> None:
    base, params = _update(6)
    manifest = manifest_of(params)
    c = Compression(codec="int8", block=16)
    payload = encode_update(params, base, manifest, c, rng=np.random.default_rng(0))
    path = tmp_path / "spool"
    path.write_bytes(payload)
    spool = np.memmap(path, dtype=np.uint8, mode="r")
    from_file = decode_update(spool, base, manifest, c)
    from_bytes = decode_update(payload, base, manifest, c)
    for name in params:
        np.testing.assert_array_equal(from_file[name].to_numpy(), from_bytes[name].to_numpy())
    with pytest.raises(InvalidArgument, match="flat, contiguous uint8"):
        decode_update(np.zeros(len(payload), dtype=np.int8), base, manifest, c)


# --- folding lazy tensors -------------------------------------------------------------------------


@pytest.mark.parametrize("codec", [*CODECS, "int8:block=0", "int8:block=100"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_weighted_mean_folds_lazy_tensors_like_dense_ones(codec: str, dtype: str) -> None:
    c = parse_compression(codec)
    rng = np.random.default_rng(8)
    base = {"w": rng.standard_normal(300_001).astype(dtype), "b": rng.standard_normal(3).astype(dtype)}
    manifest = manifest_of(base)
    lazy_mean, dense_mean = WeightedMean(manifest), WeightedMean(manifest)
    for weight in (3.0, 5.0):
        params = {name: (a + rng.standard_normal(a.shape) * 0.1).astype(dtype) for name, a in base.items()}
        lazy = decode_update(encode_update(params, base, manifest, c, rng=rng), base, manifest, c)
        assert all(isinstance(t, CompressedTensor) for t in lazy.values())
        assert manifest_of(lazy) == manifest
        lazy_mean.add(lazy, weight)
        dense_mean.add({name: t.to_numpy() for name, t in lazy.items()}, weight)
    for name in base:
        np.testing.assert_array_equal(lazy_mean.partial().arrays[name], dense_mean.partial().arrays[name])


def test_lazy_tensor_slices_are_bounded_and_match_the_whole() -> None:
    base, params = _update(9, shape=(100, 10))
    manifest = manifest_of(params)
    c = Compression(codec="int8", block=64)
    tensor = decode_update(encode_update(params, base, manifest, c, rng=np.random.default_rng(0)), base, manifest, c)[
        "w"
    ]
    assert (tensor.dtype, tensor.shape, tensor.size, tensor.nbytes) == (np.dtype("float32"), (100, 10), 1000, 4000)
    pieces = list(flat_slices(tensor, 37))
    assert max(stop - start for start, stop, _ in pieces) <= 37
    np.testing.assert_array_equal(np.concatenate([p for *_, p in pieces]), tensor.to_numpy().reshape(-1))
    np.testing.assert_array_equal(np.asarray(tensor), tensor.to_numpy())
    check_finite("w", tensor)


def test_a_fold_refuses_an_update_whose_base_overflows() -> None:
    base = {"w": np.full(4, 60000, dtype=np.float16)}
    params = {"w": np.full(4, 65000, dtype=np.float16)}
    manifest = manifest_of(base)
    c = Compression(codec="topk", ratio=1.0)
    lazy = decode_update(encode_update(params, base, manifest, c, rng=np.random.default_rng(0)), base, manifest, c)
    np.testing.assert_array_equal(lazy["w"].to_numpy(), params["w"])
    bigger = {"w": np.full(4, 30000, dtype=np.float32)}
    payload = encode_update({"w": np.full(4, 60000, dtype=np.float32)}, bigger, manifest_of(bigger), c, rng=RNG)
    overflowing = decode_update(payload, base, manifest, c)  # decoded against a base it was not made from
    with pytest.raises(NonFiniteValues, match="'w'"):
        WeightedMean(manifest).add(overflowing, 1.0)


# --- downlink -------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["none", "float16", "int8", "int8:block=0,stochastic=true"])
def test_downlink_round_trip_is_deterministic_and_bounded(codec: str) -> None:
    c = parse_compression(codec)
    rng = np.random.default_rng(10)
    arrays = {
        "w": rng.standard_normal((50, 20)).astype(np.float32),
        "d": rng.standard_normal(7),
        "steps": np.arange(4, dtype=np.int64),
    }
    manifest = manifest_of(arrays)
    payload = encode_model_downlink(arrays, manifest, c)
    assert payload == encode_model_downlink(arrays, manifest, c)  # int8 rounds to nearest here
    assert len(payload) == downlink_payload_bytes(manifest, c)
    got = decode_model_downlink(payload, manifest, c)
    np.testing.assert_array_equal(got["steps"], arrays["steps"])
    for name in ("w", "d"):
        assert got[name].dtype == arrays[name].dtype and got[name].shape == arrays[name].shape
        bound = {"none": 0.0, "float16": 2.0**-11 * np.abs(arrays[name]), "int8": np.abs(arrays[name]).max() / 254}
        np.testing.assert_array_less(np.abs(got[name] - arrays[name]), bound[c.codec] * 1.0001 + 1e-7)
    with pytest.raises(InvalidModel, match="should have"):
        decode_model_downlink(payload[:-1], manifest, c)


def test_downlink_refuses_topk() -> None:
    arrays = {"w": np.zeros(4, dtype=np.float32)}
    c = Compression(codec="topk")
    for call in (
        lambda: encode_model_downlink(arrays, manifest_of(arrays), c),
        lambda: decode_model_downlink(b"", manifest_of(arrays), c),
        lambda: downlink_payload_bytes(manifest_of(arrays), c),
    ):
        with pytest.raises(InvalidArgument, match="topk cannot compress a whole model; use it for updates"):
            call()


@settings(max_examples=150, deadline=None)
@given(codec=st.sampled_from(CODECS), data=st.data())
def test_random_payload_bytes_decode_or_fail_cleanly(codec: str, data) -> None:
    """Whatever bytes arrive: a clear refusal (InvalidModel, NonFiniteValues), or tensors that fold."""
    base = {"w": np.zeros((3, 70), dtype=np.float32), "n": np.zeros(2, dtype=np.int64)}
    manifest = manifest_of(base)
    c = parse_compression(codec + (":ratio=0.05" if codec == "topk" else ""))
    size = compressed_payload_bytes(manifest, c) + data.draw(st.sampled_from([0, 0, 0, -1, 1]))
    payload = data.draw(st.binary(min_size=max(size, 0), max_size=max(size, 0)))
    try:
        lazy = decode_update(payload, base, manifest, c)
        WeightedMean(manifest).add(lazy, 1.0)
    except (InvalidModel, NonFiniteValues):
        return
    assert np.isfinite(lazy["w"].to_numpy()).all()


def test_a_topk_warmup_keeps_more_in_its_first_rounds_and_is_spelled_out():
    c = parse_compression("topk:ratio=0.01,warmup=3")
    assert parse_compression(c.text()) == c and "warmup=3" in c.text()
    assert [c.for_round(i).ratio for i in range(1, 6)] == [0.25, 0.0625, 0.015625, 0.01, 0.01]
    assert all(c.for_round(i).warmup == 0 for i in range(1, 6))  # a round's codec is concrete
    assert parse_compression("topk:ratio=0.5,warmup=4").for_round(2).ratio == 0.5  # never below ratio
    assert parse_compression("int8").for_round(1) == parse_compression("int8")
    with pytest.raises(InvalidArgument, match="warmup applies to topk only"):
        parse_compression("int8:warmup=2")


def test_error_feedback_carries_the_residual_across_a_warmup():
    """The share kept changes from round to round; the residual does not restart, so what every round
    sent plus what is left still adds up to every round's delta."""
    rng = np.random.default_rng(5)
    manifest = [TensorSpec("w", "float32", (400,))]
    c = parse_compression("topk:ratio=0.01,warmup=3")
    base = {"w": np.zeros(400, np.float32)}
    residual: dict[str, np.ndarray] = {}
    sent, true = np.zeros(400), np.zeros(400)
    for index in range(1, 6):
        delta = rng.normal(size=400).astype(np.float32)
        true += delta
        codec = c.for_round(index)
        payload = encode_update({"w": delta}, base, manifest, codec, rng=rng, residual=residual)
        assert len(payload) == compressed_payload_bytes(manifest, codec)
        sent += decode_update(payload, base, manifest, codec)["w"].to_numpy()
    np.testing.assert_allclose(sent + residual["w"], true, rtol=1e-4, atol=1e-4)


def test_an_int8_block_larger_than_the_tensor_is_one_scale_and_sizes_no_buffer():
    """A session's block comes from its options: block=2**40 on a small tensor must not allocate 2**40
    values at the client (encode) or the combiner (fold); it is one scale per tensor, as block=0."""
    rng = np.random.default_rng(3)
    manifest = [TensorSpec("w", "float32", (300,))]
    base = {"w": np.zeros(300, np.float32)}
    params = {"w": rng.normal(size=300).astype(np.float32)}
    huge, whole = parse_compression("int8:block=1099511627776,stochastic=false"), parse_compression("int8:block=0")
    payload = encode_update(params, base, manifest, huge, rng=rng)
    assert payload == encode_update(params, base, manifest, whole.model_copy(update={"stochastic": False}), rng=rng)
    lazy = decode_update(payload, base, manifest, huge)["w"]
    assert [part.size for _, _, part in lazy.flat_slices(128)] == [128, 128, 44]
    np.testing.assert_allclose(lazy.to_numpy(), params["w"], atol=float(np.abs(params["w"]).max()) / 127)


@pytest.mark.parametrize("codec", CODECS)
def test_a_compressed_update_found_finite_is_not_decoded_again(codec: str, monkeypatch) -> None:
    # the combiner's check and the aggregator's both read the update: the second must not decode it again
    payload, base, manifest, c = _payload(codec)
    lazy = decode_update(bytes(payload), base, manifest, c)
    decodes: list[tuple[int, int]] = []
    original = CompressedTensor._dense

    def counted(self, start: int, stop: int) -> np.ndarray:
        decodes.append((start, stop))
        return original(self, start, stop)

    monkeypatch.setattr(CompressedTensor, "_dense", counted)
    check_finite("w", lazy["w"])
    assert decodes == [(0, 1000)] and lazy["w"].finite
    agg = WeightedMean(manifest)
    agg.add(lazy, 1.0)  # validate (skipped for "w") and the fold (which decodes it)
    assert decodes == [(0, 1000), (0, 1000)]
