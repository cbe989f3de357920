"""A million declared clients: sampling, dropout draws, profiles and partitions cost what is sampled."""

from __future__ import annotations

import random
import tracemalloc
import types
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from fedn.errors import InvalidArgument
from fedn.partition import MAX_DIRICHLET_PARTITIONS, partition_labels, partition_of
from fedn.sampling import seeded_uniforms, select_clients
from fedn.sim import parse_spec
from fedn.sim.async_rounds import _Schedule
from fedn.sim.spec import client_profiles, round_sample
from fedn.sim.sync_rounds import _show_up

MILLION = 1_000_000
MIB = 1 << 20


def _spec(**fields: Any) -> Any:
    return parse_spec(**{"client": "bench.workloads:SyntheticClient", "rounds": 3, **fields})


def _peak_bytes(work: Callable[[], object]) -> tuple[object, int]:
    tracemalloc.start()
    try:
        result = work()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_sampling_1000_of_a_million_is_reproducible_and_allocates_little() -> None:
    spec = _spec(clients=MILLION, combiners=2, fraction=0.001, seed=11)
    sample, peak = _peak_bytes(lambda: round_sample(spec, 4))
    assert [len(ids) for ids in sample] == [500, 500]
    assert all(cid % 2 == g and 0 <= cid < MILLION for g, ids in enumerate(sample) for cid in ids)
    assert all(ids == sorted(set(ids)) for ids in sample)
    assert sample == round_sample(spec, 4)
    assert sample != round_sample(spec, 5)
    assert sample != round_sample(_spec(clients=MILLION, combiners=2, fraction=0.001, seed=12), 4)
    assert peak < MIB  # a list of the million ids alone would be over 30 MiB


def test_a_range_samples_as_the_same_ids_in_a_list() -> None:
    members = range(3, 20_000, 3)
    assert select_clients(members, 40, 9) == select_clients(list(members), 40, 9)
    assert select_clients(members, 40, 9) == sorted(random.Random(9).sample(list(members), 40))
    assert select_clients(range(5), 9, 1) == [0, 1, 2, 3, 4]
    assert select_clients(range(9, 0, -2), 2, 3) == select_clients([9, 7, 5, 3, 1], 2, 3)  # sorted first


def test_seeded_uniforms_are_the_full_draw_at_the_positions() -> None:
    full = np.random.default_rng([4, 2, 2]).random(50_000)
    for positions in ([], [0], [7, 8, 9, 49_999], list(range(0, 50_000, 7)), list(range(100, 50_000, 997))):
        assert np.array_equal(seeded_uniforms([4, 2, 2], positions, 50_000), full[positions])
    with pytest.raises(ValueError, match="ascend"):
        seeded_uniforms([1], [5, 3], 10)
    with pytest.raises(ValueError, match="within"):
        seeded_uniforms([1], [10], 10)


def test_dropout_draws_cost_the_sampled_clients_and_match_a_draw_per_declared_client() -> None:
    spec = _spec(clients=MILLION, combiners=2, fraction=0.001, heterogeneity={"dropout": 0.5}, seed=3)
    slowdown, dropout = client_profiles(spec)
    ctx = types.SimpleNamespace(spec=spec, slowdown=slowdown, dropout=dropout)
    selected = round_sample(spec, 2)
    (tasks, dropped), peak = _peak_bytes(lambda: _show_up(ctx, 2, selected))
    assert peak < MIB
    draw = np.random.default_rng([3, 2, 2]).random(MILLION)  # one number per declared client, as before
    kept = [(cid, g, 1.0) for g, ids in enumerate(selected) for cid in ids if draw[cid] >= 0.5]
    assert tasks == kept and dropped == 1000 - len(kept) and 0 < dropped < 1000


def test_profiles_are_reproducible_per_client_and_one_bit_each() -> None:
    spec = _spec(clients=MILLION, heterogeneity={"slow_share": 0.25, "slowdown": 4, "dropout": 0.3}, seed=5)
    (slowdown, dropout), peak = _peak_bytes(lambda: client_profiles(spec))
    assert peak < 20 * MIB  # the transient permutation: 8 bytes a client, once
    again_slow, again_drop = client_profiles(spec)
    some = range(0, MILLION, 9973)
    assert [slowdown[i] for i in some] == [again_slow[i] for i in some]
    assert [dropout[i] for i in some] == [again_drop[i] for i in some]
    assert {slowdown[i] for i in some} == {1.0, 4.0} and {dropout[i] for i in some} == {0.3}
    slow = sum(slowdown[i] == 4.0 for i in range(0, MILLION, 97))
    assert abs(slow / len(range(0, MILLION, 97)) - 0.25) < 0.02
    assert slowdown._bits is not None and slowdown._bits.nbytes == MILLION // 8
    with pytest.raises(IndexError):
        slowdown[MILLION]
    other = client_profiles(_spec(clients=MILLION, heterogeneity={"slow_share": 0.25, "slowdown": 4}, seed=6))[0]
    assert [other[i] for i in some] != [slowdown[i] for i in some]


def test_profiles_nobody_has_keep_no_bits() -> None:
    slowdown, dropout = client_profiles(_spec(clients=MILLION))
    assert not slowdown.any() and not dropout.any()
    assert slowdown[123_456] == 1.0 and dropout[999_999] == 0.0


def test_async_schedule_over_a_million_declared_clients_holds_the_ones_that_ran() -> None:
    spec = _spec(clients=MILLION, fraction=0.001, mode="async", seed=2)
    slowdown, dropout = client_profiles(spec)
    ctx = types.SimpleNamespace(spec=spec, slowdown=slowdown, dropout=dropout)

    def run() -> list[int]:
        schedule = _Schedule(ctx)
        return [schedule.next_done(0)[0].client for _ in range(3000)]

    done, peak = _peak_bytes(run)
    assert peak < 4 * MIB
    assert len(set(done[:1000])) == 1000  # the first sample finishes, then the others take turns
    assert done == run()


@pytest.mark.parametrize("scheme", ["iid", "quantity", "shard", "dirichlet"])
def test_a_partition_built_alone_is_the_listed_one(scheme: str) -> None:
    labels = np.random.default_rng(1).integers(0, 10, 2000)
    for parts, seed in ((7, 0), (60, 3)):
        listed = partition_labels(labels, parts, scheme, alpha=0.4, seed=seed)
        for index in range(parts):
            alone = partition_of(labels, parts, index, scheme, alpha=0.4, seed=seed)
            assert np.array_equal(alone, listed[index]), (parts, index)


def test_a_partition_of_a_million_is_a_range_of_one_cached_ordering() -> None:
    partition_of(2 * MILLION, MILLION, 0, "iid", seed=8)  # builds the ordering of the examples once
    part, peak = _peak_bytes(lambda: partition_of(2 * MILLION, MILLION, 765_432, "iid", seed=8))
    assert len(part) == 2 and peak < 64 * 1024
    order = np.random.default_rng(8).permutation(2 * MILLION)
    assert np.array_equal(part, np.sort(order[2 * 765_432 : 2 * 765_433]))
    quantity = [partition_of(2 * MILLION, MILLION, i, "quantity", alpha=0.5, seed=8) for i in (0, 500_000, 999_999)]
    assert all(len(p) >= 1 for p in quantity)


def test_bad_partition_requests_are_refused_clearly() -> None:
    labels = np.zeros(100, dtype=np.int64)
    with pytest.raises(ValueError, match="outside"):
        partition_of(labels, 10, 10, "iid")
    with pytest.raises(ValueError, match="needs the labels"):
        partition_of(100, 10, 0, "shard")
    with pytest.raises(ValueError, match="unknown partitioner"):
        partition_of(labels, 10, 0, "zipf")
    with pytest.raises(ValueError, match=r"use shard \(label skew\) or quantity"):
        partition_of(np.zeros(MILLION, dtype=np.int64), MAX_DIRICHLET_PARTITIONS + 1, 0, "dirichlet")
    with pytest.raises(InvalidArgument, match="dirichlet"):
        _spec(clients=MAX_DIRICHLET_PARTITIONS + 1, partition="dirichlet")
    assert _spec(clients=MILLION, partition="shard").clients == MILLION
