"""How many downloads of a model a combiner streams at once."""

from __future__ import annotations

from combiner.model_cache import download_concurrency

MiB = 1 << 20


def test_small_models_use_every_download_slot_and_large_ones_fewer():
    assert download_concurrency(400_000, 16, 16 * MiB) == 16  # a 100k-parameter model
    assert download_concurrency(40 * MiB, 16, 16 * MiB) == 2  # a 10M-parameter model: 8 MiB per stream
    assert download_concurrency(4 * MiB, 16, 16 * MiB) == 4
    assert download_concurrency(1 << 30, 16, 1 * MiB) == 1  # never zero
    assert download_concurrency(0, 16, 16 * MiB) == 16
