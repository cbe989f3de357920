"""Updates staged on disk: the spool's checks, tensors read back in slices, and folds that equal the
in-memory ones."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from fedn.aggregation import WeightedMean, make_aggregator
from fedn.chunking import ChunkSpool, iter_chunks
from fedn.codec import SpooledTensor, check_finite, encode_payload, flat_slices, manifest_of, spooled_arrays
from fedn.errors import ChecksumMismatch, InvalidModel, NonFiniteValues, PayloadTooLarge
from fedn.sim.memory import peak_rss_mb, rss_mb


@pytest.fixture
def spool(tmp_path):
    """Stage arrays in a ChunkSpool, as a combiner does; every file is closed after the test."""
    opened: list[ChunkSpool] = []

    def stage(arrays: dict[str, np.ndarray], chunk_bytes: int = 999) -> dict[str, SpooledTensor]:
        manifest, payload = encode_payload(arrays)
        opened.append(ChunkSpool(len(payload), hashlib.sha256(payload).hexdigest(), directory=str(tmp_path)))
        opened[-1].add_all(list(iter_chunks(payload, chunk_bytes)))
        return spooled_arrays(manifest, opened[-1].finish())

    yield stage
    for s in opened:
        s.close()


def _model(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w": rng.standard_normal((300, 70)).astype(np.float32),
        "b": rng.standard_normal(70).astype(np.float64),
        "steps": np.array(7, np.int64),
    }


def test_spooled_tensors_read_back_whole_and_in_slices(spool):
    arrays = _model()
    spooled = spool(arrays)
    assert manifest_of(spooled) == manifest_of(arrays)  # from the header: nothing read
    for name, value in arrays.items():
        np.testing.assert_array_equal(np.asarray(spooled[name]), value)
        pieces = [(start, stop, part.copy()) for start, stop, part in flat_slices(spooled[name], 1000)]  # reused
        assert [p[0] for p in pieces] == list(range(0, value.size, 1000))
        np.testing.assert_array_equal(np.concatenate([p[2] for p in pieces]), value.reshape(-1))


def test_the_spool_refuses_what_the_assembler_refuses(tmp_path):
    data = os.urandom(5000)
    digest = hashlib.sha256(data).hexdigest()
    with pytest.raises(PayloadTooLarge, match="limit"):
        ChunkSpool(10**12, digest, max_bytes=1024, directory=str(tmp_path))
    over = ChunkSpool(10, digest, directory=str(tmp_path))
    with pytest.raises(PayloadTooLarge, match="more than"):
        over.add(data)
    under = ChunkSpool(len(data), digest, directory=str(tmp_path))
    under.add(data[:100])
    with pytest.raises(InvalidModel, match="ended after"):
        under.finish()
    wrong = ChunkSpool(len(data), "0" * 64, directory=str(tmp_path))
    wrong.add_all([data[:2000], data[2000:]])
    with pytest.raises(ChecksumMismatch):
        wrong.finish()
    for spool in (over, under, wrong):
        spool.close()


def test_a_nan_at_the_very_end_of_a_spooled_tensor_is_found(spool):
    big = np.zeros(600_000, np.float32)  # more than one slice of the check
    big[-1] = np.inf
    spooled = spool({"big": big}, chunk_bytes=1 << 16)
    with pytest.raises(NonFiniteValues, match="big"):
        check_finite("big", spooled["big"])


def test_a_truncated_spool_file_is_an_error_not_garbage(spool):
    arrays = {"w": np.ones(1000, np.float32)}
    spooled = spool(arrays)
    spooled["w"]._file.truncate(100)
    with pytest.raises(InvalidModel, match="ended early"):
        spooled["w"].read(0, 1000)


def test_folding_spooled_updates_equals_folding_them_in_memory(spool):
    base = _model(9)
    updates = [(_model(seed), weight) for seed, weight in ((1, 10.0), (2, 30.0), (3, 60.0))]
    in_memory, on_disk = WeightedMean(manifest_of(base)), WeightedMean(manifest_of(base))
    for arrays, weight in updates:
        in_memory.add(arrays, weight, base=base, scale=0.5)
        on_disk.add(spool(arrays), weight, base=base, scale=0.5)
    expected, got = in_memory.partial(), on_disk.partial()
    for name in base:
        np.testing.assert_array_equal(got.arrays[name], expected.arrays[name])


def test_a_spooled_update_with_a_nan_leaves_the_sum_untouched(spool):
    arrays = _model()
    mean = WeightedMean(manifest_of(arrays))
    mean.add(arrays, 1.0)
    before = {k: v.copy() for k, v in mean.partial().arrays.items()}
    bad = {k: v.copy() for k, v in arrays.items()}
    bad["b"][-1] = np.nan  # in the last tensor folded
    with pytest.raises(NonFiniteValues):
        mean.add(spool(bad), 1.0)
    assert mean.count == 1
    for name, value in mean.partial().arrays.items():
        np.testing.assert_array_equal(value, before[name])


def test_a_robust_rule_reads_spooled_updates_whole(spool):
    arrays = [_model(seed) for seed in range(3)]
    median = make_aggregator("median", manifest_of(arrays[0]))
    for a in arrays:
        median.add(spool(a), 1.0)
    expected = np.median(np.stack([a["w"] for a in arrays]), axis=0)
    np.testing.assert_allclose(median.partial().arrays["w"], expected, rtol=1e-6)


def test_peak_rss_is_at_least_the_current_rss():
    assert peak_rss_mb(os.getpid()) >= rss_mb(os.getpid()) > 0
    assert peak_rss_mb(2**22 + 12345) == 0.0  # no such process


def test_a_staged_tensor_found_finite_is_not_read_again(spool, monkeypatch):
    # the combiner checks every staged update, then the aggregator checks it again: the second check
    # of a spooled (or compressed) tensor would read the file (or decode the payload) once more
    reads: list[SpooledTensor] = []
    original = SpooledTensor.read

    def counted(self, start, stop, out=None):
        reads.append(self)
        return original(self, start, stop, out)

    monkeypatch.setattr(SpooledTensor, "read", counted)
    staged = spool(_model())  # "w" and "b" are one slice each
    check_finite("w", staged["w"])
    assert reads == [staged["w"]] and staged["w"].finite
    check_finite("w", staged["w"])
    WeightedMean(manifest_of(_model())).validate(staged, 1.0)  # the aggregator's own check
    assert reads == [staged["w"], staged["b"]]  # "w" was not read again; "b" had not been checked

    bad = _model()
    bad["w"][-1, -1] = np.nan
    tainted = spool(bad)
    for _ in range(2):  # a tensor that failed is not marked: checked again, it fails again
        with pytest.raises(NonFiniteValues):
            check_finite("w", tainted["w"])
        assert not tainted["w"].finite
