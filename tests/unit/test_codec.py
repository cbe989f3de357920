"""Model codec: round-trips, no pickle, clear errors on malformed input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedn.codec import (
    TensorSpec,
    check_finite,
    check_manifest,
    decode_model,
    decode_payload,
    encode_model,
    encode_payload,
    manifest_of,
    payload_bytes,
)
from fedn.errors import InvalidModel, NonFiniteValues

dtypes = st.sampled_from(["float16", "float32", "float64", "int32", "int64", "uint8", "bool"])
names = st.text(alphabet="abcdefghij._0123456789", min_size=1, max_size=12)


@st.composite
def named_arrays(draw):
    keys = draw(st.lists(names, min_size=1, max_size=5, unique=True))
    out = {}
    for key in keys:
        dtype = draw(dtypes)
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5))
        out[key] = draw(hnp.arrays(dtype=dtype, shape=shape))
    return out


def _assert_same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
        np.testing.assert_array_equal(a[k], b[k])


@settings(max_examples=60, deadline=None)
@given(named_arrays())
def test_payload_round_trip(arrays):
    manifest, payload = encode_payload(arrays)
    assert len(payload) == payload_bytes(manifest)
    _assert_same(arrays, decode_payload(manifest, payload))


@settings(max_examples=60, deadline=None)
@given(named_arrays())
def test_model_file_round_trip(arrays):
    decoded = decode_model(encode_model(arrays))
    assert set(decoded) == set(arrays)
    for k in arrays:
        np.testing.assert_array_equal(decoded[k], arrays[k])
        assert decoded[k].dtype == arrays[k].dtype


def test_decode_model_rejects_garbage_and_pickles():
    import pickle

    with pytest.raises(InvalidModel):
        decode_model(b"not a model at all")
    with pytest.raises(InvalidModel):
        decode_model(pickle.dumps({"w": np.zeros(3)}))


def test_decode_payload_rejects_wrong_size():
    manifest = [TensorSpec("w", "float32", (4,))]
    with pytest.raises(InvalidModel, match="15 bytes"):
        decode_payload(manifest, b"\0" * 15)


def test_unsupported_dtype_is_rejected():
    with pytest.raises(InvalidModel, match="complex128"):
        encode_payload({"w": np.zeros(2, dtype=np.complex128)})


def test_check_manifest_names_the_difference():
    base = manifest_of({"a": np.zeros((2, 3), np.float32), "b": np.zeros(4, np.float32)})
    with pytest.raises(InvalidModel, match="missing"):
        check_manifest(base, manifest_of({"a": np.zeros((2, 3), np.float32)}))
    with pytest.raises(InvalidModel, match="shape"):
        check_manifest(base, manifest_of({"a": np.zeros((3, 2), np.float32), "b": np.zeros(4, np.float32)}))
    with pytest.raises(InvalidModel, match="dtype"):
        check_manifest(base, manifest_of({"a": np.zeros((2, 3), np.float64), "b": np.zeros(4, np.float32)}))
    with pytest.raises(InvalidModel, match="order"):
        check_manifest(base, manifest_of({"b": np.zeros(4, np.float32), "a": np.zeros((2, 3), np.float32)}))
    check_manifest(base, list(base))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_check_finite(bad):
    with pytest.raises(NonFiniteValues):
        check_finite("w", np.array([1.0, bad], dtype=np.float32))
    check_finite("i", np.array([1, 2], dtype=np.int64))


def test_decode_model_order_is_the_file_order_every_time():
    arrays = {f"layer{i}.weight": np.full((i + 1,), i, np.float32) for i in range(30)}
    blob = encode_model(arrays)
    first = list(decode_model(blob))
    assert sorted(first) == sorted(arrays)
    for _ in range(5):
        assert list(decode_model(blob)) == first


def test_streamed_safetensors_is_the_same_model_and_the_library_reads_it():
    from safetensors.numpy import load

    from fedn.codec import encode_model_chunks

    arrays = {
        "w": np.arange(12, dtype=np.float64).reshape(3, 4),
        "h": np.ones(3, np.float16),
        "f": np.linspace(0, 1, 5, dtype=np.float32),
        "steps": np.array(7, np.int64),
        "mask": np.array([True, False, True]),
        "b": np.arange(3, dtype=np.uint8),
        "t": np.arange(6, dtype=np.int32).reshape(2, 3).T,  # not contiguous
    }
    chunks = list(encode_model_chunks(arrays))
    assert len(chunks) == 1 + len(arrays) and len(chunks[0]) % 8 == 0
    blob = b"".join(bytes(c) for c in chunks)
    library = load(blob)
    decoded = decode_model(blob)
    assert list(decoded) == list(arrays)  # tensors in the given order
    for name, a in arrays.items():
        np.testing.assert_array_equal(decoded[name], a)
        np.testing.assert_array_equal(library[name], a)
        assert decoded[name].dtype == a.dtype and decoded[name].shape == a.shape
    with pytest.raises(InvalidModel):
        list(encode_model_chunks({}))


def test_split_model_gives_the_wire_payload_without_decoding():
    from fedn.codec import encode_model_chunks, encode_payload, split_model

    arrays = {"b": np.ones(3, np.float32), "a": np.arange(4, dtype=np.int64).reshape(2, 2), "s": np.array(True)}
    for blob in (encode_model(arrays), b"".join(bytes(c) for c in encode_model_chunks(arrays))):
        manifest, payload = split_model(blob)
        decoded = decode_model(blob)
        want_manifest, want_payload = encode_payload(decoded)
        assert manifest == want_manifest and bytes(payload) == want_payload
    blob = encode_model(arrays)
    for bad in (b"", blob[:20], blob[:-1], b"\x08" + b"\x00" * 7 + b"not json"):
        with pytest.raises(InvalidModel):
            split_model(bad)


@pytest.mark.parametrize("dtype", ["bogus", "", "float128", "complex64", "object"])
def test_a_manifest_of_an_unknown_dtype_is_invalid_model_before_any_size_is_computed(dtype: str) -> None:
    # payload_bytes asks numpy for the item size first: "bogus" was its TypeError, not a refusal
    with pytest.raises(InvalidModel, match="unsupported dtype"):
        decode_payload([TensorSpec("w", dtype, (3,))], b"\0" * 12)
