"""A fuzz campaign on where text or bytes from a user or the network enter the compressed-update code.

- Codec option texts (and mappings): accepted into a canonical text that parses back to the same
  codec, or refused with InvalidArgument; nothing else escapes.
- Compressed payloads as a combiner (``decode_update`` then its finiteness check) or a client
  (``decode_model_downlink``) reads them, mutated every way a wire can or built field by field from
  boundary values: refused with InvalidModel or NonFiniteValues (nothing else) exactly when a
  reference decoder written from the documented layout refuses them, else decoded to its finite
  values of the declared shape and dtype; and a declared size is refused before anything of that
  size is allocated.
- Round trips on random tensors: each codec within the bound docs/compression.md states, and top-k
  error feedback (with momentum) conserving what it did not send.
"""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from combiner.compressed import is_raw, negotiate, update_compression
from fedn.aggregation.weighted_mean import WeightedMean
from fedn.codec import TensorSpec, check_finite
from fedn.compression import (
    CODECS,
    Compression,
    compressed_payload_bytes,
    decode_model_downlink,
    decode_update,
    encode_model_downlink,
    encode_update,
    parse_compression,
    section_bytes,
)
from fedn.compression_format import scale_count, topk_count
from fedn.errors import InvalidArgument, InvalidModel, NonFiniteValues
from fedn.records import RoundPlan
from fedn.wire import TaskInfo

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FIELDS = [name for name in Compression.model_fields if name != "codec"]
F32_MAX = float(np.finfo(np.float32).max)

# --- option texts ---------------------------------------------------------------------------------

NASTY_WORDS = (
    "nan NaN inf -inf Infinity -0.0 -0 0 1 1e309 -1e309 1e-400 5e-324 true false yes off 1_000 0x10 1e3 .5 +.5 "
    "1.0 5. = 0.5= \u00e9 \U0001f600 \u0661\u0662 \uff11"  # Arabic-Indic and fullwidth digits
)
nasty_values = st.sampled_from(
    [
        *NASTY_WORDS.split(),
        *(str(v) for v in (2**63, 2**63 - 1, 2**64, -(2**63))),
        *("9" * 4300, "9" * 5000, "0." + "0" * 5000 + "1"),  # past Python's 4300-digit limit
        *("", " ", "\u00a0", "1\x00", "0.01\u2028"),
    ]
)
values = st.one_of(
    nasty_values,
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=12),
)
keys = st.one_of(st.sampled_from([*FIELDS, "codec", "", "Block", "ratio ", "blocks", "é"]), st.text(max_size=6))
spaces = st.sampled_from(["", " ", "\t", "\u3000", "\n"])
codecs = st.one_of(
    st.sampled_from([*CODECS, "INT8", " Topk ", "", "gzip", "int8\x00", "\uff49\uff4e\uff54\uff18"]),
    st.text(max_size=6),
)


@st.composite
def option_texts(draw) -> str:
    pairs = draw(st.lists(st.tuples(keys, values, spaces), max_size=5))
    if pairs and draw(st.booleans()):  # the first key again, where no other bad key is refused before it
        pairs.insert(1, (pairs[0][0], draw(values), draw(spaces)))
    items = [f"{space}{key}{space}={space}{value}{space}" for key, value, space in pairs]
    if draw(st.booleans()):
        items.insert(draw(st.integers(0, len(items))), draw(st.sampled_from(["", "block", "=", ",", ":"])))
    separator = draw(st.sampled_from([":", ":", " : ", "", "::"]))
    return draw(codecs) + separator + ",".join(items)


huge_ints = st.sampled_from([2**63 - 1, 2**63, 2**64, -(2**63), 10**4300, 10**5000])  # 4301+ digits: no text
mapping_values = st.one_of(
    huge_ints,
    st.sampled_from([-0.0, math.nan, math.inf, 1e308, 5e-324, True, None, ""]),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    values,
)


def _accepted_or_refused(value: object) -> Compression | None:
    """The codec ``value`` names, checked to round-trip through its canonical text; None if refused."""
    try:
        c = parse_compression(value)  # type: ignore[arg-type]
    except InvalidArgument:
        return None
    text = c.text()
    assert parse_compression(text) == c, (value, text)
    assert parse_compression(text).text() == text
    return c


@FUZZ
@given(text=st.one_of(option_texts(), st.text(max_size=60)))
def test_an_option_text_is_canonical_or_refused(text: str) -> None:
    _accepted_or_refused(text)


@FUZZ
@given(
    codec=st.one_of(st.sampled_from(CODECS), st.text(max_size=5), st.integers()),
    fields=st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=4)), mapping_values, max_size=4),
)
def test_an_option_mapping_is_canonical_or_refused(codec: object, fields: dict) -> None:
    _accepted_or_refused({"codec": codec, **fields})


@pytest.mark.parametrize("field", FIELDS)
@settings(max_examples=60, deadline=None)
@given(
    codec=st.sampled_from(["float16", "int8", "topk"]),
    value=st.one_of(nasty_values, huge_ints, mapping_values),
    text=st.booleans(),
)
def test_each_parameter_alone_is_canonical_or_refused(field: str, codec: str, value: object, text: bool) -> None:
    """One parameter at a time, as text or in a mapping, so a value that every field refuses cannot
    hide what one field accepts."""
    if text and isinstance(value, str):
        _accepted_or_refused(f"{codec}:{field}={value}")
    else:
        _accepted_or_refused({"codec": codec, field: value})


@pytest.mark.parametrize(
    "value",
    [
        {"codec": "int8", "block": 10**5000},
        {"codec": "int8", "block": 2**64},
        "int8:block=" + str(2**63),
        "int8:block=" + "9" * 4000,
    ],
)
def test_an_int8_block_beyond_int64_is_refused(value: object) -> None:
    """Regression: block=10**5000 in a mapping was accepted, and its canonical text then raised
    ValueError (Python will not print an int of more than 4300 digits); refused, the mapping's repr in
    the error message raised the same ValueError."""
    with pytest.raises(InvalidArgument, match="block"):
        parse_compression(value)  # type: ignore[arg-type]
    assert parse_compression(f"int8:block={2**63 - 1}").text() == f"int8:block={2**63 - 1}"


@FUZZ
@given(
    plan_codec=st.sampled_from(["none", "float16", "int8:block=256", "topk:ratio=0.01", "topk:ratio=0.5"]),
    header=st.one_of(st.text(max_size=300), option_texts(), st.sampled_from(["", "none", "NONE", "int8", "float16 "])),
)
def test_an_update_header_codec_is_raw_the_plans_or_refused(plan_codec: str, header: str) -> None:
    plan = RoundPlan(round_id="r1", session_id="s", round_index=1, model_id="m", compression=plan_codec)
    try:
        got = update_compression(header, plan)
    except InvalidArgument as exc:
        assert not is_raw(header) and (header != plan_codec or is_raw(plan_codec))
        assert exc.message.isprintable() and len(exc.message) < 400  # one bounded line, whatever was sent
        return
    if is_raw(header):
        assert got is None
    else:
        assert header == plan_codec and got == parse_compression(plan_codec)


@FUZZ
@given(
    uplink=st.sampled_from(["none", "", "float16", "int8:block=64", "topk:ratio=0.01"]),
    downlink=st.sampled_from(["none", "", "float16", "int8:block=0"]),
    announced=st.frozensets(st.one_of(st.sampled_from(CODECS), st.text(max_size=5))),
)
def test_a_client_is_told_only_codecs_it_announced(uplink: str, downlink: str, announced: frozenset) -> None:
    task = TaskInfo("train", "r1", "s1", "m1", compression=uplink, downlink_compression=downlink)
    told = negotiate(task, announced)
    if is_raw(uplink) and is_raw(downlink):
        assert told == task
        return
    for sent, planned in ((told.compression, uplink), (told.downlink_compression, downlink)):
        offered = not is_raw(planned) and parse_compression(planned).codec in announced
        assert sent == (planned if offered else "none")


# --- mutated payloads -----------------------------------------------------------------------------

PAYLOAD_CODECS = ["float16", "int8:block=0", "int8:block=4", "int8:block=7,stochastic=false", "topk:ratio=0.3", "topk"]
SHAPES = [(), (0,), (1,), (5,), (3, 4), (0, 3), (2, 9)]
DTYPES = ["float16", "float32", "float64", "int64"]
U32 = [0, 1, 2, 2**31, 2**32 - 1]  # 2**32 - 1 is -1 as a uint32
VALUES = [math.nan, math.inf, -math.inf, -0.0, -1.0, 1e-45, F32_MAX, -F32_MAX]
# scales about float32's limit / 127: code 127 or -128 times them may overflow
SCALE_LIMIT = float(np.float32(np.finfo(np.float32).max) / np.float32(127))  # an encoder's largest: max|x| / 127
SCALES = [math.nan, math.inf, -1.0, -0.0, 1e-45, SCALE_LIMIT, SCALE_LIMIT, F32_MAX / 127.5, F32_MAX / 126, 3e38]
F16_BITS = [0x7C00, 0xFC00, 0x7E00, 0xFFFF, 0x7BFF, 0x8000]


def _field_layout(spec: TensorSpec, c: Compression) -> list[tuple[str, int, int]]:
    """(kind, offset within the section, count) of each array in ``spec``'s section."""
    n = spec.size
    if np.dtype(spec.dtype).kind != "f":
        return [("raw", 0, spec.nbytes)]
    if c.codec == "float16":
        return [("half", 0, n)]
    if c.codec == "int8":
        blocks = scale_count(n, c.block)
        return [("scale", 0, blocks), ("code", 4 * blocks, n)]
    k = topk_count(n, c.ratio)
    return [("index", 0, k), ("value", 4 * k, k)]


@st.composite
def manifests(draw) -> list[TensorSpec]:
    count = draw(st.integers(1, 3))
    return [TensorSpec(f"t{i}", draw(st.sampled_from(DTYPES)), draw(st.sampled_from(SHAPES))) for i in range(count)]


def _arrays(manifest: list[TensorSpec], seed: int, scale: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {s.name: (rng.standard_normal(s.shape) * scale).astype(s.dtype) for s in manifest}


def _mutate(data, payload: bytearray, manifest: list[TensorSpec], c: Compression) -> bytes:
    """One or two of: truncate, extend, flip a bit, poke a special value into a field, random bytes."""
    for _ in range(data.draw(st.integers(1, 2))):
        how = data.draw(st.sampled_from(["truncate", "extend", "flip", "random", "int64", *["poke"] * 5]))
        if how == "truncate":
            del payload[data.draw(st.integers(0, len(payload))) :]
        elif how == "extend":
            payload += data.draw(st.binary(min_size=1, max_size=9))
        elif how == "random":
            payload[:] = data.draw(st.binary(min_size=len(payload), max_size=len(payload)))
        elif how == "int64" and len(payload) >= 8:  # a count or index pair as 2**63 - 1 or -1
            at = data.draw(st.integers(0, len(payload) - 8))
            payload[at : at + 8] = np.int64(data.draw(st.sampled_from([2**63 - 1, -1]))).astype("<i8").tobytes()
        elif how == "flip" and payload:
            at = data.draw(st.integers(0, len(payload) - 1))
            payload[at] ^= 1 << data.draw(st.integers(0, 7))
        elif how == "poke":
            _poke_field(data, payload, manifest, c)
    return bytes(payload)


def _poke_field(data, payload: bytearray, manifest: list[TensorSpec], c: Compression) -> None:
    offset, targets = 0, []
    for spec in manifest:
        targets += [(spec, kind, offset + at, count) for kind, at, count in _field_layout(spec, c) if count]
        offset += section_bytes(spec, c)
    if not targets:
        return
    spec, kind, at, count = data.draw(st.sampled_from(targets))
    i = data.draw(st.integers(0, count - 1))
    if kind == "index":
        before = at + 4 * (i - 1)
        previous = int(np.frombuffer(payload, "<u4", 1, before)[0]) if i and before + 4 <= len(payload) else 0
        value = data.draw(st.sampled_from([*U32, spec.size, spec.size - 1, previous]))
        raw = np.uint32(value % 2**32).astype("<u4").tobytes()
    elif kind in ("scale", "value"):
        raw = np.float32(data.draw(st.sampled_from(SCALES if kind == "scale" else VALUES))).astype("<f4").tobytes()
    elif kind == "half":
        raw = np.uint16(data.draw(st.sampled_from(F16_BITS))).astype("<u2").tobytes()
        at += 2 * i
        i = 0
    elif kind == "code":
        raw = np.int8(data.draw(st.sampled_from([-128, 127, -127, 0]))).tobytes()
        at += i
        i = 0
    else:
        raw = data.draw(st.binary(min_size=1, max_size=1))
        at += i
        i = 0
    start = at + 4 * i
    payload[start : start + len(raw)] = raw


def _other_manifest(data, manifest: list[TensorSpec]) -> list[TensorSpec]:
    """The same names with another shape or dtype: a payload decoded against a manifest it was not made for."""
    i = data.draw(st.integers(0, len(manifest) - 1))
    spec = manifest[i]
    other = TensorSpec(spec.name, data.draw(st.sampled_from(DTYPES)), data.draw(st.sampled_from(SHAPES)))
    return [*manifest[:i], other, *manifest[i + 1 :]]


def _as_received(data, payload: bytes) -> bytes | bytearray | memoryview | np.ndarray:
    kind = data.draw(st.sampled_from(["bytes", "bytearray", "memoryview", "array"]))
    if kind == "array":  # what a spool file's memory map is
        return np.frombuffer(payload, dtype=np.uint8)
    return {"bytes": payload, "bytearray": bytearray(payload), "memoryview": memoryview(payload)}[kind]


class _Refusable(Exception):
    """What docs/compression.md says a receiver refuses as malformed, before reading any of it: a wrong
    length, NaN or Inf values or scales, negative or oversized int8 scales, top-k indices out of range
    or not strictly increasing."""


class _NotFinite(_Refusable):
    """A well-formed payload whose dense values are not finite (base + delta beyond the dtype's range, a
    raw NaN): refused by the finiteness check every update gets before it is folded."""


def _reference(payload: bytes, base: dict | None, manifest: list[TensorSpec], c: Compression) -> dict:
    """The documented decoding, written out from the layout: each tensor dense (base + delta for an
    update, the values themselves for a model when ``base`` is None), or _Refusable."""
    if len(payload) != sum(section_bytes(spec, c) for spec in manifest):
        raise _Refusable("length")
    out, at = {}, 0
    for spec in manifest:
        n, dtype = spec.size, np.dtype(spec.dtype)
        raw, at = payload[at : at + section_bytes(spec, c)], at + section_bytes(spec, c)
        if dtype.kind != "f" or c.codec == "none":
            out[spec.name] = np.frombuffer(raw, dtype.newbyteorder("<")).astype(dtype).reshape(spec.shape)
            if base is not None and dtype.kind == "f" and not np.isfinite(out[spec.name]).all():
                raise _NotFinite("a raw update's value")
            continue
        compute = np.float64 if dtype == np.float64 else np.float32
        flat_base = np.zeros(n, dtype) if base is None else base[spec.name].reshape(-1)
        if c.codec == "float16":
            delta = np.frombuffer(raw, "<f2").astype(np.float32)
            if not np.isfinite(delta).all():
                raise _Refusable("float16 value")
        elif c.codec == "int8":
            blocks = scale_count(n, c.block)
            scales = np.frombuffer(raw[: 4 * blocks], "<f4")
            if not np.isfinite(scales).all() or (scales < 0).any() or (scales > np.float32(SCALE_LIMIT)).any():
                raise _Refusable("int8 scale")
            width = n if c.block == 0 or c.block >= n else c.block
            with np.errstate(over="ignore"):
                delta = np.frombuffer(raw[4 * blocks :], "<i1").astype(np.float32) * np.repeat(scales, width)[:n]
        else:
            k = topk_count(n, c.ratio)
            indices = np.frombuffer(raw[: 4 * k], "<u4").astype(np.int64)
            values = np.frombuffer(raw[4 * k :], "<f4")
            if (indices >= n).any() or (np.diff(indices) <= 0).any() or not np.isfinite(values).all():
                raise _Refusable("topk index or value")
            delta = np.zeros(n, np.float32)
            delta[indices] = values
        with np.errstate(over="ignore"):
            if base is None:
                dense = delta.astype(dtype)
            elif c.codec == "topk":
                dense = flat_base.astype(compute)
                dense[indices] += values
                dense = dense.astype(dtype)
            else:
                dense = np.add(flat_base, delta, dtype=compute).astype(dtype)
        if not np.isfinite(dense).all():
            raise _NotFinite("a dense value beyond the dtype's range")
        out[spec.name] = dense.reshape(spec.shape)
    return out


def _expected(payload: object, base: dict | None, manifest: list[TensorSpec], c: Compression) -> dict | str:
    """The reference's tensors, or the name of the class of its refusal."""
    flat = payload.tobytes() if isinstance(payload, np.ndarray) else bytes(payload)  # type: ignore[arg-type]
    try:
        return _reference(flat, base, manifest, c)
    except _Refusable as exc:
        return type(exc).__name__


def _combiner_reads(payload: object, base: dict, manifest: list[TensorSpec], c: Compression) -> bool:
    """What a combiner does with an update: decode it, check it finite, fold it. It must refuse (with
    InvalidModel or NonFiniteValues, nothing else) exactly what the documented decoding refuses, and
    otherwise give the documented values, whole and slice by slice. False if refused."""
    expected = _expected(payload, base, manifest, c)
    event(f"{c.codec}: {expected if isinstance(expected, str) else 'decoded'}")
    try:
        lazy = decode_update(payload, base, manifest, c)  # type: ignore[arg-type]
    except (InvalidModel, NonFiniteValues):
        assert expected == "_Refusable", f"decode_update refused a payload the documented layout takes: {expected}"
        return False
    assert expected != "_Refusable", "decode_update took a payload the documented layout refuses"
    try:
        for name, tensor in lazy.items():
            check_finite(name, tensor)
    except NonFiniteValues:
        assert expected == "_NotFinite", "the finiteness check refused finite values"
        return False
    assert isinstance(expected, dict), "non-finite values passed the finiteness check"
    for spec in manifest:
        tensor = lazy[spec.name]
        whole = tensor.to_numpy()
        assert whole.shape == spec.shape and whole.dtype == np.dtype(spec.dtype)
        np.testing.assert_array_equal(whole, expected[spec.name])  # finite: the reference checked
        pieces = [part for _, _, part in tensor.flat_slices(4)]
        np.testing.assert_array_equal(np.concatenate([whole.reshape(-1)[:0], *pieces]), whole.reshape(-1))
    WeightedMean(manifest).add(lazy, 1.0)
    return True


@FUZZ
@given(codec=st.sampled_from(PAYLOAD_CODECS), manifest=manifests(), seed=st.integers(0, 2**16), data=st.data())
def test_a_mutated_update_is_refused_clearly_or_decodes_as_documented(codec, manifest, seed, data) -> None:
    c = parse_compression(codec)
    base = _arrays(manifest, seed)
    params = {name: (a + _arrays(manifest, seed + 1)[name]).astype(a.dtype) for name, a in base.items()}
    payload = encode_update(params, base, manifest, c, rng=np.random.default_rng(seed))
    assert _combiner_reads(payload, base, manifest, c)  # the valid encoding decodes
    mutated = _mutate(data, bytearray(payload), manifest, c)
    declared = manifest
    if data.draw(st.booleans()):
        declared = _other_manifest(data, manifest)
        base = _arrays(declared, seed)  # the combiner's base is the model's: it fits the manifest
    _combiner_reads(_as_received(data, mutated), base, declared, c)


@FUZZ
@given(
    codec=st.sampled_from(["float16", "int8:block=0", "int8:block=3", "none"]),
    manifest=manifests(),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_a_mutated_downlink_model_is_refused_clearly_or_decodes_as_documented(codec, manifest, seed, data) -> None:
    """As a client decodes the global model: a compressed tensor is refused unless finite (a raw one,
    as without compression, is checked where it is used)."""
    c = parse_compression(codec)
    payload = encode_model_downlink(_arrays(manifest, seed), manifest, c)
    _client_reads(_as_received(data, _mutate(data, bytearray(payload), manifest, c)), manifest, c)


def _client_reads(payload: object, manifest: list[TensorSpec], c: Compression) -> None:
    """What a client does with the global model: decode it whole. Refused (InvalidModel or
    NonFiniteValues, nothing else) exactly when the documented decoding refuses it, else its values."""
    expected = _expected(payload, None, manifest, c)
    event(f"{c.codec}: {expected if isinstance(expected, str) else 'decoded'}")
    try:
        model = decode_model_downlink(payload, manifest, c)  # type: ignore[arg-type]
    except (InvalidModel, NonFiniteValues):
        assert isinstance(expected, str), "refused a model the documented layout accepts"
        return
    assert isinstance(expected, dict), f"accepted a model the documented layout refuses: {expected}"
    for spec in manifest:
        assert model[spec.name].shape == spec.shape and model[spec.name].dtype == np.dtype(spec.dtype)
        np.testing.assert_array_equal(model[spec.name], expected[spec.name])


f32s = st.floats(width=32, allow_nan=True, allow_infinity=True)


@pytest.mark.parametrize("codec", ["float16", "int8:block=0", "int8:block=2", "topk:ratio=0.5", "topk:ratio=1.0"])
@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 6), dtype=st.sampled_from(["float16", "float32", "float64"]), data=st.data())
def test_each_field_at_its_boundaries_is_refused_or_decodes_as_documented(codec, n, dtype, data) -> None:
    """One tensor whose section is built field by field from boundary values (float16 bit patterns,
    int8 scales about float32's limit / 127 and codes up to -128, top-k indices about n and 2**32 - 1,
    NaN and infinite values), so each of the receiver's checks meets what it is for every time."""
    c = parse_compression(codec)
    spec = TensorSpec("w", dtype, (n,))
    if c.codec == "float16":
        bits = data.draw(st.lists(st.one_of(st.sampled_from(F16_BITS), st.integers(0, 0xFFFF)), min_size=n, max_size=n))
        payload = np.array(bits, "<u2").tobytes()
    elif c.codec == "int8":
        near_limit = st.floats(F32_MAX / 130, F32_MAX / 126)
        scale = st.one_of(st.sampled_from(SCALES), near_limit, f32s, st.floats(0, 1e-30))
        scales = data.draw(st.lists(scale, min_size=scale_count(n, c.block), max_size=scale_count(n, c.block)))
        codes = data.draw(st.lists(st.integers(-128, 127), min_size=n, max_size=n))
        payload = np.array(scales, "<f4").tobytes() + np.array(codes, np.int8).tobytes()
    else:
        k = topk_count(n, c.ratio)
        indices = sorted(data.draw(st.sets(st.integers(0, n - 1), min_size=k, max_size=k)))
        if data.draw(st.booleans()):  # one index out of range, repeated or out of order
            i = data.draw(st.integers(0, k - 1))
            indices[i] = data.draw(st.sampled_from([n, n + 1, 2**31, 2**32 - 1, 0, indices[i - 1], n - 1]))
        finite = st.floats(width=32, allow_nan=False, allow_infinity=False)
        values = data.draw(st.lists(st.one_of(finite, st.sampled_from(VALUES)), min_size=k, max_size=k))
        payload = np.array(indices, "<u4").tobytes() + np.array(values, "<f4").tobytes()
    base = _arrays([spec], data.draw(st.integers(0, 3)), data.draw(st.sampled_from([0.0, 1.0, 1e4])))
    _combiner_reads(payload, base, [spec], c)
    if c.codec != "topk":
        _client_reads(payload, [spec], c)


@pytest.mark.parametrize(
    ("scale", "codes"),
    [(SCALE_LIMIT, [127, 1]), (SCALE_LIMIT, [-128, 0]), (F32_MAX / 127.5, [-128, 5])],
)
def test_an_int8_downlink_that_decodes_beyond_float32_is_refused(scale: float, codes: list[int]) -> None:
    """Regression: a scale at the limit (max / 127, as float32 rounds it up) times code 127, or a code
    of -128 (never written by the encoder) times a large scale, overflowed to ±inf, which the client
    was handed as its model."""
    manifest = [TensorSpec("w", "float32", (2,))]
    payload = np.float32(scale).astype("<f4").tobytes() + np.array(codes, np.int8).tobytes()
    c = parse_compression("int8:block=0")
    with pytest.raises(NonFiniteValues, match="'w'"):
        decode_model_downlink(payload, manifest, c)
    lazy = decode_update(payload, {"w": np.zeros(2, np.float32)}, manifest, c)
    with pytest.raises(NonFiniteValues, match="'w'"):  # an update is refused by the combiner's check
        check_finite("w", lazy["w"])


@pytest.mark.parametrize("codec", [*PAYLOAD_CODECS, "none", "int8:block=1099511627776", "topk:ratio=1.0"])
def test_a_declared_size_is_refused_before_anything_of_it_is_allocated(codec: str) -> None:
    """A manifest declaring 2**40 elements (or a block of 2**40) against a short payload: refused on
    its length, with no allocation of that size (the peak stays under a megabyte)."""
    c = parse_compression(codec)
    manifest = [TensorSpec("w", "float32", (2**20, 2**20)), TensorSpec("b", "float32", (3,))]
    base = {"w": np.zeros(0, np.float32), "b": np.zeros(3, np.float32)}
    for payload in (b"", bytes(1 << 10), np.zeros(1 << 12, np.uint8)):
        tracemalloc.start()
        try:
            with pytest.raises(InvalidModel, match="should have"):
                decode_update(payload, base, manifest, c)
            if c.codec != "topk":
                with pytest.raises(InvalidModel, match="should have"):
                    decode_model_downlink(payload, manifest, c)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 1 << 20, peak


@pytest.mark.parametrize("dtype", ["bfloat16", "", "object", "complex64", "float128"])
def test_a_manifest_dtype_outside_the_codec_is_refused(dtype: str) -> None:
    """Regression: an unknown dtype in a manifest escaped as numpy's TypeError; a raw payload's
    decoder (fedn.codec.decode_payload) refuses it with InvalidModel, and so does a compressed one."""
    manifest = [TensorSpec("w", dtype, (4,))]
    for codec in ("none", "float16", "int8", "topk"):
        with pytest.raises(InvalidModel, match="unsupported dtype"):
            decode_update(bytes(16), {"w": np.zeros(4, np.float32)}, manifest, parse_compression(codec))
    with pytest.raises(InvalidModel, match="unsupported dtype"):
        decode_model_downlink(bytes(16), manifest, parse_compression("float16"))


@pytest.mark.parametrize("shape", [(-1,), (-2, -2), (4, -1)])
def test_a_manifest_with_a_negative_dimension_is_refused(shape: tuple[int, ...]) -> None:
    """Regression: a length that fits such a manifest (its section counts negative bytes) let numpy
    read the rest of the payload (count -1) or fail to reshape, escaping as ValueError."""
    manifest = [TensorSpec("w", "int64", shape), TensorSpec("v", "float32", (4,))]
    for codec in ("none", "float16", "int8:block=0", "topk:ratio=1.0"):
        c = parse_compression(codec)
        payload = bytes(max(0, compressed_payload_bytes(manifest, c)))
        with pytest.raises(InvalidModel, match="negative"):
            decode_update(payload, {"v": np.zeros(4, np.float32)}, manifest, c)


# --- round trips ----------------------------------------------------------------------------------

round_shapes = st.lists(st.integers(0, 7), max_size=3).map(tuple)
magnitudes = st.sampled_from([0.0, 1e-44, 1e-40, 1e-38, 2.0**-20, 1e-6, 1e-3, 1.0, 1e3, 6e4, 1e30, 1e37])


def _delta(seed: int, shape: tuple, magnitude: float, dtype: str) -> tuple[dict, dict, np.ndarray]:
    """A zero base, a trained model of random magnitudes up to ``magnitude``, and the float32 delta encoded."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * magnitude * rng.uniform(0, 1, shape) ** rng.integers(0, 4)
    trained = {"w": x.astype(np.float32).astype(dtype)}
    return {"w": np.zeros(shape, dtype)}, trained, trained["w"].astype(np.float32).reshape(-1)


def _sent(params: dict, base: dict, c: Compression, seed: int, **state) -> tuple[bytes, np.ndarray]:
    """The payload of ``params`` and what a combiner decodes of it: base is zero, so the delta, flat."""
    manifest = [TensorSpec("w", base["w"].dtype.name, base["w"].shape)]
    payload = encode_update(params, base, manifest, c, rng=np.random.default_rng(seed), **state)
    decoded = decode_update(payload, base, manifest, c)["w"]
    check_finite("w", decoded)
    return payload, decoded.to_numpy().astype(np.float64).reshape(-1)


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**16), shape=round_shapes, magnitude=magnitudes, dtype=st.sampled_from(["float32", "float64"])
)
def test_float16_round_trip_within_its_stated_bound(seed: int, shape: tuple, magnitude: float, dtype: str) -> None:
    base, params, x = _delta(seed, shape, magnitude, dtype)
    c = parse_compression("float16")
    if np.abs(x).max(initial=0) > 65504:
        with pytest.raises(InvalidArgument, match="beyond float16's range"):
            _sent(params, base, c, seed)
        return
    error = np.abs(_sent(params, base, c, seed)[1] - x)
    # relative 2**-11 where |x| >= 2**-14 (float16's normal range), absolute 2**-25 below it
    bound = np.where(np.abs(x) >= 2.0**-14, np.abs(x) * 2.0**-11, 2.0**-25)
    assert (error <= bound).all(), (error - bound).max()


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    shape=round_shapes,
    magnitude=magnitudes,
    block=st.sampled_from([0, 1, 3, 8, 256, 2**40]),
    stochastic=st.booleans(),
    dtype=st.sampled_from(["float32", "float64"]),
)
def test_int8_round_trip_within_one_scale(seed, shape, magnitude, block, stochastic, dtype) -> None:
    """|error| <= scale (stochastic) or scale / 2 (nearest), scale = max|x| / 127 of the block, down to
    the smallest magnitudes: a scale below float32's normal range once quantized every value to ±127."""
    base, params, x = _delta(seed, shape, magnitude, dtype)
    c = Compression(codec="int8", block=block, stochastic=stochastic)
    error = np.abs(_sent(params, base, c, seed)[1] - x)
    n = x.size
    width = n if block == 0 or block >= n else block
    padded = np.zeros(scale_count(n, width) * max(width, 1))
    padded[:n] = np.abs(x)
    scale = np.repeat(padded.reshape(-1, max(width, 1)).max(axis=1) / 127, max(width, 1))[:n]
    allowed = scale if stochastic else scale / 2
    # float32 arithmetic: a few ulps of the value, and the rounding of a scale below float32's normal range
    assert (error <= allowed * (1 + 2.0**-12) + 2.0**-140).all(), (error / np.maximum(allowed, 1e-300)).max()


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    shape=round_shapes,
    magnitude=magnitudes,
    ratio=st.floats(1e-6, 1.0),
    dtype=st.sampled_from(["float32", "float64"]),
)
def test_topk_keeps_exactly_the_largest_entries(seed, shape, magnitude, ratio, dtype) -> None:
    base, params, x = _delta(seed, shape, magnitude, dtype)
    c = Compression(codec="topk", ratio=ratio, error_feedback=False)
    payload, sent = _sent(params, base, c, seed)
    n = x.size
    k = topk_count(n, ratio)
    indices = np.frombuffer(payload, "<u4", k)
    assert (np.diff(indices.astype(np.int64)) > 0).all()
    np.testing.assert_array_equal(sent[indices], x[indices])  # exact on the k kept
    dropped = np.setdiff1d(np.arange(n), indices)
    assert not sent[dropped].any()
    if k and dropped.size:
        assert np.abs(x[dropped]).max() <= np.abs(x[indices]).min()


@settings(max_examples=100, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    shape=round_shapes,
    ratio=st.floats(1e-3, 1.0),
    momentum=st.one_of(st.just(0.0), st.floats(0.0, 1.0, exclude_max=True)),
    rounds=st.integers(1, 4),
    warmup=st.integers(0, 3),
)
def test_topk_error_feedback_conserves_what_it_did_not_send(seed, shape, ratio, momentum, rounds, warmup) -> None:
    """Each round: sent + new residual == the round's input, bit for bit, where the input is
    residual + (momentum * velocity + delta); the new velocity is that velocity with the sent entries
    zeroed, and so is the new residual."""
    rng = np.random.default_rng(seed)
    c = Compression(codec="topk", ratio=ratio, momentum=momentum, warmup=warmup)
    base = {"w": np.zeros(shape, np.float32)}
    residual: dict[str, np.ndarray] = {}
    velocity: dict[str, np.ndarray] = {}
    r_old = np.zeros(math.prod(shape), np.float32)
    u_old = np.zeros(math.prod(shape), np.float32)
    for index in range(1, rounds + 1):
        delta = (rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 3)).astype(np.float32)
        codec = c.for_round(index)
        payload, sent = _sent({"w": delta}, base, codec, seed, residual=residual, velocity=velocity)
        kept = np.frombuffer(payload, "<u4", topk_count(delta.size, codec.ratio))
        moving = u_old * np.float32(momentum) + delta.reshape(-1) if momentum else delta.reshape(-1)
        x = moving + r_old
        r_new = residual["w"].reshape(-1)
        np.testing.assert_array_equal(sent.astype(np.float32) + r_new, x)
        assert not r_new[kept].any()
        if momentum:
            expected_u = moving.copy()
            expected_u[kept] = 0
            np.testing.assert_array_equal(velocity["w"].reshape(-1), expected_u)
            u_old = expected_u
        else:
            assert not velocity
        r_old = r_new.copy()
