"""Fuzzing the simulator's million-client pieces: the spec and `fedn simulate` flags, per-round sampling,
seeded partitions, and the memory-mapped per-client state store (including stores a crash left behind).

Every input is either refused with the project's error (InvalidArgument from the spec, ValueError from
the partitioners, exit 2 from the CLI) or accepted and behaves; nothing allocates per declared client.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from fedn.cli import main
from fedn.errors import FailedPrecondition, InvalidArgument
from fedn.partition import dirichlet_partition, partition_labels, partition_of, quantity_skew_partition
from fedn.sampling import sample_seed, sample_size, seeded_uniforms, select_clients
from fedn.sim import parse_spec
from fedn.sim.client_state import ClientStateStore
from fedn.sim.spec import client_profiles, round_sample
from tests.unit.test_sim_scale import _peak_bytes

INT64_MAX = 2**63 - 1
MILLION = 1_000_000
MIB = 1 << 20
CLIENT = "bench.workloads:SyntheticClient"
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _spec(**fields: Any) -> Any:
    return parse_spec(**{"client": CLIENT, "clients": 10, "rounds": 3, **fields})


# -- the spec ------------------------------------------------------------------------------------------

REFUSED = [
    ({"clients": 0}, "clients: Input should be greater than or equal to 1"),
    ({"clients": -1}, "clients: Input should be greater than or equal to 1"),
    ({"clients": 2**63}, "clients: Input should be less than or equal to 9223372036854775807"),
    ({"clients": 2**64}, "clients: Input should be less than or equal to 9223372036854775807"),
    ({"clients": 1.5}, "clients: Input should be a valid integer"),
    ({"fraction": math.nan}, "fraction: Input should be"),
    ({"fraction": math.inf}, "fraction: Input should be less than or equal to 1"),
    ({"fraction": 0}, "fraction: Input should be greater than 0"),
    ({"fraction": -0.0}, "fraction: Input should be greater than 0"),
    ({"fraction": 1.0000001}, "fraction: Input should be less than or equal to 1"),
    ({"seed": -1}, "seed: Input should be greater than or equal to 0"),
    ({"seed": 2**63}, "seed: Input should be less than or equal to 9223372036854775807"),
    ({"seed": 2**64}, "seed: Input should be less than or equal to 9223372036854775807"),
    ({"rounds": 0}, "rounds: Input should be greater than or equal to 1"),
    ({"alpha": math.nan, "partition": "dirichlet"}, "alpha: Input should be a finite number"),
    ({"alpha": math.inf, "partition": "quantity"}, "alpha: Input should be a finite number"),
    ({"alpha": 0, "partition": "dirichlet"}, "alpha: Input should be greater than 0"),
    ({"heterogeneity": {"slowdown": math.inf, "slow_share": 0.5}}, "heterogeneity.slowdown: Input should be a finite"),
    ({"heterogeneity": {"deadline_s": math.inf}}, "heterogeneity.deadline_s: Input should be a finite"),
    ({"heterogeneity": {"task_time_s": math.nan}}, "heterogeneity.task_time_s: Input should be"),
    # a round's clients are listed by the driver: all of 2**63 - 1 clients ran it out of memory
    ({"clients": INT64_MAX}, "a round would train 9223372036854775807 clients, more than the 10000000"),
    ({"clients": 10_000_001, "fraction": 1.0}, "a round would train 10000001 clients"),
    ({"clients": 10**9, "fraction": 0.02}, "a round would train 20000000 clients"),
    ({"clients": 2000, "combiners": 1025}, "combiners: Input should be less than or equal to 1024"),
]


@pytest.mark.parametrize(("fields", "message"), REFUSED, ids=[repr(f) for f, _ in REFUSED])
def test_bad_spec_fields_are_refused_clearly(fields: dict, message: str) -> None:
    with pytest.raises(InvalidArgument, match=r"^invalid simulation: ") as caught:
        _spec(**fields)
    assert message in caught.value.message


def test_a_seed_past_int64_would_sample_as_a_smaller_one() -> None:
    # why seeds stop at 2**63 - 1: round seeds are taken modulo 2**63, so 2**63 would draw seed 0's clients
    assert all(sample_seed(2**63, r) == sample_seed(0, r) for r in range(5))
    accepted = _spec(clients=1000, fraction=0.01, seed=INT64_MAX)
    assert round_sample(accepted, 1) != round_sample(_spec(clients=1000, fraction=0.01, seed=0), 1)


def test_edge_values_that_are_accepted_behave() -> None:
    assert [len(g) for g in round_sample(_spec(fraction=1e-300), 1)] == [1]  # ceil, then at least min_clients
    many_rounds = _spec(rounds=2**64)
    assert many_rounds.rounds == 2**64 and round_sample(many_rounds, 2**64) == round_sample(many_rounds, 2**64)
    widest = _spec(clients=INT64_MAX, combiners=3, fraction=1e-15, seed=INT64_MAX)
    groups, peak = _peak_bytes(lambda: round_sample(widest, 7))
    assert sum(map(len, groups)) == sample_size(INT64_MAX, 1e-15, 1) == 9224
    assert all(0 <= c <= INT64_MAX and c % 3 == g for g, ids in enumerate(groups) for c in ids)
    assert peak < 4 * MIB  # the picks, never the ids
    for value in (True, 2.0, "7"):  # pydantic's lax ints: either refused, or the number they stand for
        try:
            spec = _spec(clients=value)
        except InvalidArgument:
            continue
        assert spec.clients == int(value) and sum(map(len, round_sample(spec, 1))) == int(value)


_ANY_NUMBER = st.one_of(
    st.integers(-(2**65), 2**65),
    st.sampled_from([0, -1, 1, 2**63 - 1, 2**63, 2**64, True, False]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -0.0, 1e-300, 1.0000001, 0.5]),
)


@FUZZ
@given(
    clients=_ANY_NUMBER,
    fraction=_ANY_NUMBER,
    seed=_ANY_NUMBER,
    alpha=_ANY_NUMBER,
    rounds=_ANY_NUMBER,
    junk=st.sets(st.sampled_from(["clients", "fraction", "seed", "alpha", "rounds"]), min_size=1),
)
def test_any_number_in_the_spec_is_refused_clearly_or_stays_in_bounds(
    clients: Any, fraction: Any, seed: Any, alpha: Any, rounds: Any, junk: set[str]
) -> None:
    drawn = {"clients": clients, "fraction": fraction, "seed": seed, "alpha": alpha, "rounds": rounds}
    fields = {"clients": 10, "fraction": 0.5, "seed": 1, "alpha": 0.5, "rounds": 3} | {k: drawn[k] for k in junk}
    try:
        spec = _spec(**fields)
    except InvalidArgument as exc:
        assert exc.message.startswith("invalid simulation: ")
        assert any(f"{name}: " in exc.message for name in junk), exc.message
        event("refused")
        return
    event("accepted")
    assert 1 <= spec.clients <= INT64_MAX and 0 < spec.fraction <= 1 and 0 <= spec.seed <= INT64_MAX
    assert 0 < spec.alpha < math.inf and spec.rounds >= 1


@FUZZ
@given(
    clients=st.one_of(st.integers(1, 3000), st.integers(1, INT64_MAX)),
    k=st.integers(1, 3000),
    combiners=st.integers(1, 8),
    min_clients=st.integers(1, 5),
    seed=st.integers(0, INT64_MAX),
    round_index=st.integers(0, 2**64),
)
def test_a_round_samples_the_stated_number_within_the_clients(
    clients: int, k: int, combiners: int, min_clients: int, seed: int, round_index: int
) -> None:
    assume(combiners <= clients and min_clients <= clients)
    spec = _spec(
        clients=clients, fraction=min(1.0, k / clients), combiners=combiners, min_clients=min_clients, seed=seed
    )
    wanted = sample_size(clients, spec.fraction, min_clients) if spec.fraction < 1 else clients
    assert wanted == max(min_clients, min(k, clients))
    groups, peak = _peak_bytes(lambda: round_sample(spec, round_index))
    ids = [c for g in groups for c in g]
    assert len(ids) == len(set(ids)) == wanted
    assert all(0 <= c < clients and c % combiners == g for g, grp in enumerate(groups) for c in grp)
    assert all(grp == sorted(grp) for grp in groups)
    assert groups == round_sample(spec, round_index)
    assert peak < 2 * MIB + 400 * wanted  # what was sampled, whatever was declared


# -- the CLI flags -------------------------------------------------------------------------------------


@pytest.mark.usefixtures("restore_root_logging")
@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--clients", "0"], "clients: Input should be greater than or equal to 1"),
        (["--clients", "-1"], "clients: Input should be greater than or equal to 1"),
        (["--clients", str(2**63)], "clients: Input should be less than or equal to 9223372036854775807"),
        (["--clients", str(2**64)], "clients: Input should be less than or equal to 9223372036854775807"),
        (["--clients", "1.5"], "argument --clients: invalid int value: '1.5'"),
        (["--clients", "True"], "argument --clients: invalid int value: 'True'"),
        (["--fraction", "nan"], "fraction: Input should be"),
        (["--fraction", "inf"], "fraction: Input should be less than or equal to 1"),
        (["--fraction", "-0.0"], "fraction: Input should be greater than 0"),
        (["--fraction", "1.0000001"], "fraction: Input should be less than or equal to 1"),
        (["--seed", "-1"], "seed: Input should be greater than or equal to 0"),
        (["--seed", str(2**64)], "seed: Input should be less than or equal to 9223372036854775807"),
        (["--rounds", "0"], "rounds: Input should be greater than or equal to 1"),
        (["--partition", "quantity", "--alpha", "inf"], "alpha: Input should be a finite number"),
        (["--partition", "dirichlet", "--alpha", "nan"], "alpha: Input should be a finite number"),
        (["--partition", "dirichlet", "--alpha", "0"], "alpha: Input should be greater than 0"),
        (["--slowdown", "inf", "--slow-share", "0.5"], "heterogeneity.slowdown: Input should be a finite number"),
        (["--workers", "0"], "--workers must be at least 1"),
    ],
)
def test_bad_simulate_flags_exit_2_with_one_error_line(flags: list[str], says: str, capsys, tmp_path) -> None:
    argv = ["simulate", "--client", CLIENT, "--clients", "4", "--rounds", "1", "--workers", "1", "--no-progress"]
    try:
        code = main([*argv, "--out", str(tmp_path / "run"), *flags])
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and says in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before anything ran


# -- sampling ------------------------------------------------------------------------------------------


@FUZZ
@given(total=st.integers(1, 10**7), k=st.integers(1, 10**7))
def test_a_fraction_of_k_in_total_samples_k(total: int, k: int) -> None:
    k = min(k, total)
    assert sample_size(total, k / total, 1) == k  # 0.07 * 100 is 7.000000000000001 in floats: still 7


@FUZZ
@given(total=st.integers(1, 2**53), fraction=st.floats(1e-300, 1.0), minimum=st.integers(1, 50))
def test_sample_size_is_the_ceiling_within_rounding_and_bounded(total: int, fraction: float, minimum: int) -> None:
    size = sample_size(total, fraction, minimum)
    exact = Fraction(fraction) * total  # the product without float rounding
    assert min(total, minimum) <= size <= min(total, max(minimum, math.ceil(exact)))
    assert size >= min(total, max(minimum, math.floor(exact * (1 - Fraction(1, 10**12)))))


@FUZZ
@given(
    start=st.integers(0, 2**40),
    step=st.integers(1, 1000),
    count=st.integers(0, 10**6),
    k=st.integers(-3, 3000),
    seed=st.integers(0, INT64_MAX),
)
def test_select_clients_is_a_reproducible_sorted_subset_of_the_stated_size(
    start: int, step: int, count: int, k: int, seed: int
) -> None:
    members = range(start, start + step * count, step)
    picks, peak = _peak_bytes(lambda: select_clients(members, k, seed))
    assert len(picks) == (count if k <= 0 or k >= count else k)
    assert picks == sorted(set(picks)) and all(p in members for p in picks)
    assert picks == select_clients(members, k, seed)
    if 0 < k < count:
        assert peak < 1 * MIB + 300 * k  # the picks, not the members
    if count <= 2000:
        assert picks == select_clients(list(members), k, seed)


@FUZZ
@given(
    total=st.integers(1, 5000),
    data=st.data(),
    seed=st.lists(st.integers(0, 2**64), min_size=1, max_size=3),
)
def test_seeded_uniforms_are_the_full_draw_at_any_positions(total: int, data: Any, seed: list[int]) -> None:
    positions = sorted(data.draw(st.sets(st.integers(0, total - 1), max_size=min(total, 300))))
    full = np.random.default_rng(seed).random(total)
    assert np.array_equal(seeded_uniforms(seed, positions, total), full[positions])


@pytest.mark.parametrize(("clients", "combiners", "fraction"), [(12, 4, 0.1), (249, 4, 1e-300), (MILLION, 4, 1e-6)])
def test_a_group_without_a_share_asks_no_client_not_all_of_them(clients: int, combiners: int, fraction: float) -> None:
    spec = _spec(clients=clients, combiners=combiners, fraction=fraction)
    groups, peak = _peak_bytes(lambda: round_sample(spec, 1))
    wanted = sample_size(clients, fraction, 1)
    assert wanted < combiners and sum(map(len, groups)) == wanted  # was wanted + every client of the other groups
    assert sum(1 for g in groups if g) == wanted and peak < MIB  # as the reducer leaves those combiners out


def test_a_million_declared_clients_sample_and_profile_without_a_million_element_structure() -> None:
    spec = _spec(clients=MILLION, combiners=3, fraction=0.0005, seed=9)
    (groups, profiles), peak = _peak_bytes(lambda: (round_sample(spec, 1), client_profiles(spec)))
    assert sum(map(len, groups)) == 500 and not profiles[0].any() and not profiles[1].any()
    assert peak < MIB  # a list of the ids, or a mask of them, would be 8 MB / 1 MB


# -- partitions ----------------------------------------------------------------------------------------


def _assert_disjoint_cover(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == n and np.array_equal(np.sort(joined), np.arange(n))


@FUZZ
@given(
    n=st.integers(1, 600),
    k=st.integers(1, 40),
    scheme=st.sampled_from(["iid", "quantity", "shard", "dirichlet"]),
    alpha=st.one_of(st.floats(1e-300, 1e300), st.sampled_from([1e306, 1e307, 1.7e308, 5e-324])),
    shards=st.integers(1, 4),
    seed=st.integers(0, 2**64),
    classes=st.integers(1, 12),
)
def test_partitions_are_disjoint_reproducible_and_cover_the_examples(
    n: int, k: int, scheme: str, alpha: float, shards: int, seed: int, classes: int
) -> None:
    labels = np.random.default_rng(seed % 1000).integers(0, classes, n)
    try:
        parts = partition_labels(labels, k, scheme, alpha=alpha, shards=shards, seed=seed)
    except ValueError as exc:  # too few examples for the partitions (or shards) asked
        assert "cannot" in str(exc), exc
        assert n < k * (shards if scheme == "shard" else 1)
        return
    assert len(parts) == k
    _assert_disjoint_cover(parts, n)
    if scheme in ("iid", "quantity", "dirichlet"):
        minimum = max(1, min(10, n // k))
        assert min(len(p) for p in parts) >= (1 if scheme == "iid" else minimum)
    again = partition_labels(labels, k, scheme, alpha=alpha, shards=shards, seed=seed)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    for index in {0, k // 2, k - 1}:
        alone = partition_of(labels, k, index, scheme, alpha=alpha, shards=shards, seed=seed)
        assert np.array_equal(alone, parts[index])


@pytest.mark.parametrize("alpha", [math.nan, math.inf, -math.inf, 0.0, -1.0])
@pytest.mark.parametrize("scheme", ["dirichlet", "quantity"])
def test_a_non_finite_or_non_positive_alpha_is_refused(scheme: str, alpha: float) -> None:
    labels = np.repeat(np.arange(10), 100)
    with pytest.raises(ValueError, match="alpha"):
        partition_labels(labels, 8, scheme, alpha=alpha)
    with pytest.raises(ValueError, match="alpha"):
        partition_of(labels, 8, 3, scheme, alpha=alpha)


def test_an_alpha_whose_draw_overflows_splits_evenly_as_it_tends_to() -> None:
    labels = np.repeat(np.arange(10), 100)
    for alpha in (1e306, 1.7e308):  # numpy's Dirichlet draw of 1000 such shares is all zeros
        sizes = sorted(len(p) for p in quantity_skew_partition(1000, 1000 // 2, alpha=alpha, seed=1))
        assert sizes == [2] * 500
        parts = dirichlet_partition(labels, 8, alpha=alpha, seed=1)
        _assert_disjoint_cover(parts, 1000)
        assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 10  # 125 each, give or take a cut


@pytest.mark.parametrize("shards", [0, -1])
def test_zero_or_negative_shards_are_refused(shards: int) -> None:
    labels = np.repeat(np.arange(10), 10)
    with pytest.raises(ValueError, match="shards_per_partition must be at least 1"):
        partition_labels(labels, 4, "shard", shards=shards)
    with pytest.raises(ValueError, match="shards_per_partition must be at least 1"):
        partition_of(labels, 4, 0, "shard", shards=shards)


def test_a_numpy_count_of_examples_is_a_count() -> None:
    for count in (np.int64(1000), np.int32(1000), np.uint16(1000)):
        for scheme in ("iid", "quantity"):
            assert np.array_equal(partition_of(count, 7, 3, scheme, seed=2), partition_of(1000, 7, 3, scheme, seed=2))
    with pytest.raises(ValueError, match="needs the labels"):
        partition_of(np.int64(1000), 7, 3, "shard")


@pytest.mark.parametrize(("index", "parts"), [(-1, 10), (10, 10), (0, 0), (2**64, 10)])
def test_partitions_outside_the_declared_ones_are_refused(index: int, parts: int) -> None:
    with pytest.raises(ValueError, match="outside"):
        partition_of(100, parts, index, "iid")


def test_an_iid_partition_of_a_million_costs_what_the_examples_cost_not_the_partitions() -> None:
    examples = 2 * MILLION

    def one(parts: int, seed: int) -> int:
        return _peak_bytes(lambda: partition_of(examples, parts, parts - 1, "iid", seed=seed))[1]

    few, million = one(2, 101), one(MILLION, 102)  # fresh seeds: each builds its ordering of the examples
    assert million < few + MIB  # the million declared partitions add nothing to the ordering
    _, warm = _peak_bytes(lambda: partition_of(examples, MILLION, 123_456, "iid", seed=102))
    assert warm < 64 * 1024


# -- the client-state store ----------------------------------------------------------------------------

LAYOUT = {"w": (3, 2), "b": (4,), "s": (), "none": (0, 5)}
_F32 = st.floats(width=32, allow_nan=True, allow_infinity=True)


def _value(data: Any, shape: tuple[int, ...]) -> np.ndarray:
    count = math.prod(shape)
    return np.array(data.draw(st.lists(_F32, min_size=count, max_size=count)), dtype=np.float32).reshape(shape)


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype == np.float32 and a.tobytes() == b.tobytes()


@settings(max_examples=100, deadline=None)
@given(clients=st.integers(1, 50), ops=st.integers(1, 15), data=st.data())
def test_states_round_trip_per_client_across_reopening(clients: int, ops: int, data: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store, model = ClientStateStore(Path(tmp), clients, LAYOUT), {}
        for _ in range(ops):
            client = data.draw(st.sampled_from([0, clients - 1, data.draw(st.integers(0, clients - 1))]))
            name = data.draw(st.sampled_from(sorted(LAYOUT)))
            value = _value(data, LAYOUT[name])
            store.put(client, name, value)
            model.setdefault(client, {n: np.zeros(s, np.float32) for n, s in LAYOUT.items()})[name] = value
            if data.draw(st.booleans()):
                store.close()
                store = ClientStateStore(Path(tmp), clients, LAYOUT)
        assert store.slots() == len(model)
        for client in range(clients):
            for name in LAYOUT:
                got = store.get(client, name)
                assert got is None if client not in model else _same_bits(got, model[client][name])


def test_client_ids_at_the_edges(tmp_path) -> None:
    store = ClientStateStore(tmp_path, 5, {"w": (2,)})
    store.put(0, "w", np.array([1, 2]))
    store.put(4, "w", np.array([3, 4]))
    assert store.get(0, "w").tolist() == [1, 2] and store.get(4, "w").tolist() == [3, 4]
    for outside in (-1, 5, 2**63, 2**64, -(2**64)):
        with pytest.raises(InvalidArgument, match=r"outside 0\.\.4"):
            store.put(outside, "w", np.zeros(2))
        with pytest.raises(InvalidArgument, match=r"outside 0\.\.4"):
            store.get(outside, "w")
    assert store.slots() == 2


def test_shapes_zero_huge_negative_and_changing(tmp_path) -> None:
    store = ClientStateStore(tmp_path / "a", 3, {"w": (4,), "empty": (0,), "huge": (2**40,)})
    assert store.get(1, "huge") is None and store.get(1, "empty") is None  # nothing mapped or built
    store.put(1, "w", np.arange(4))
    with pytest.raises(InvalidArgument, match=r"state 'w' has shape \[4\], not \[5\]"):
        store.put(1, "w", np.arange(5))  # a shape change between rounds for one client
    assert store.get(1, "w").tolist() == [0, 1, 2, 3] and store.get(1, "empty").shape == (0,)
    with pytest.raises(InvalidArgument, match="negative dimension"):
        ClientStateStore(tmp_path / "b", 3, {"a": (-1,), "b": (3,)})  # b would spill into the next slot


@pytest.mark.parametrize("clients", [2**60, 2**62, INT64_MAX, 2**63])
def test_more_clients_than_an_index_can_hold_are_refused_clearly(tmp_path, clients: int) -> None:
    with pytest.raises(InvalidArgument, match=f"cannot index {clients} clients"):
        ClientStateStore(tmp_path, clients, {"w": (2,)})


def test_a_million_declared_clients_build_nothing_per_client(tmp_path) -> None:
    def work() -> None:
        store = ClientStateStore(tmp_path, MILLION, {"w": (100,)})
        for client in (0, 500_000, MILLION - 1):
            store.put(client, "w", np.full(100, client, np.float32))
        assert store.get(MILLION - 1, "w")[0] == MILLION - 1 and store.get(1, "w") is None
        store.close()

    assert _peak_bytes(work)[1] < MIB


def _damaged_store(tmp_path: Path) -> Path:
    store = ClientStateStore(tmp_path, 10, {"w": (4,)})
    for client in (3, 5, 7):
        store.put(client, "w", np.full(4, client, np.float32))
    store.close()
    return tmp_path


def _index(path: Path) -> np.memmap:
    return np.memmap(path / "client-state.index", dtype=np.int64, mode="r+")


def test_a_truncated_data_file_is_refused_not_read_as_zeros_or_as_the_next_owner(tmp_path) -> None:
    path = _damaged_store(tmp_path)
    os.truncate(path / "client-state.f32", 16)  # only client 3's slot left
    store = ClientStateStore(path, 10, {"w": (4,)})
    assert store.get(3, "w").tolist() == [3] * 4
    with pytest.raises(FailedPrecondition, match="client 5's entry names slot 1, outside the 1 slots"):
        store.get(5, "w")
    assert os.stat(path / "client-state.f32").st_size == 16  # a read does not grow the file
    store.put(9, "w", np.full(4, 9, np.float32))  # takes slot 1 again
    for client in (5, 7):
        with pytest.raises(FailedPrecondition, match="damaged"):
            store.get(client, "w")
    with pytest.raises(FailedPrecondition, match="damaged"):
        store.put(5, "w", np.zeros(4))
    assert store.get(9, "w").tolist() == [9] * 4


def test_a_partial_record_is_never_part_of_a_new_slot(tmp_path) -> None:
    layout = {"w": (2,), "v": (2,)}
    store = ClientStateStore(tmp_path, 10, layout)
    store.put(3, "w", np.ones(2))
    store.put(4, "w", np.full(2, 4.0))
    store.put(4, "v", np.full(2, 4.0))
    os.truncate(tmp_path / "client-state.f32", 24)  # client 4's record cut in half: its w kept, its v gone
    store.put(8, "v", np.full(2, 8.0))
    assert store.get(8, "w").tolist() == [0, 0]  # a new client's other states are zeros, not client 4's
    with pytest.raises(FailedPrecondition, match="client 4's entry names slot 1, which was handed to client 8"):
        store.get(4, "w")
    assert store.get(3, "w").tolist() == [1, 1] and store.slots() == 2


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        (3, "slot 2, which was handed to client 7"),
        (-1, "slot 0, whose last write never finished"),  # its own slot, marked mid-write
        (-6, "slot 5, outside the 3 slots"),
        (-(2**63), "slot 9223372036854775807, outside"),
        (2**40, "slot 1099511627775, outside"),
    ],
)
def test_an_index_entry_naming_a_slot_not_its_own_is_refused(tmp_path, entry: int, says: str) -> None:
    path = _damaged_store(tmp_path)
    index = _index(path)
    index[3] = entry  # client 3 now names client 7's slot, its own marked mid-write, one past the file
    index.flush()
    del index
    store = ClientStateStore(path, 10, {"w": (4,)})
    with pytest.raises(FailedPrecondition, match=f"client 3's entry names {says}"):
        store.get(3, "w")
    with pytest.raises(FailedPrecondition, match="damaged"):
        _ = 3 in store
    assert os.stat(path / "client-state.f32").st_size == 48 and store.get(7, "w").tolist() == [7] * 4


def test_a_lost_owner_record_or_layout_is_refused(tmp_path) -> None:
    path = _damaged_store(tmp_path)
    os.truncate(path / "client-state.owners", 8 * 2)  # client 7's owner (slot 2) lost
    store = ClientStateStore(path, 10, {"w": (4,)})
    assert store.get(5, "w").tolist() == [5] * 4
    with pytest.raises(FailedPrecondition, match="unowned slot 2"):
        store.get(7, "w")
    (path / "client-state.layout.json").write_text('[["w", [4')
    with pytest.raises(FailedPrecondition, match="unreadable"):
        ClientStateStore(path, 10, {"w": (4,)})


@pytest.mark.parametrize("layout", [{"w": (2,)}, {"w": (8,)}, {"v": (4,)}, {"w": (4,), "v": (1,)}, {"w": (2, 2)}])
def test_a_store_reopened_with_another_layout_is_refused(tmp_path, layout: dict) -> None:
    path = _damaged_store(tmp_path)
    with pytest.raises(InvalidArgument, match=r"laid out as \[\['w', \[4\]\]\]"):
        ClientStateStore(path, 10, layout)
    assert ClientStateStore(path, 10, {"w": (4,)}).get(5, "w").tolist() == [5] * 4


@settings(max_examples=100, deadline=None)
@given(
    damage=st.sampled_from(["data", "index", "owners", "owner-bytes"]),
    where=st.integers(0, 200),
    entry=st.integers(-(2**63), INT64_MAX),
    byte=st.integers(0, 255),
)
def test_a_damaged_store_gives_each_client_its_own_state_or_refuses(damage: str, where: int, entry: int, byte: int):
    with tempfile.TemporaryDirectory() as tmp:
        path, layout = Path(tmp), {"w": (3,), "v": (2,)}
        store = ClientStateStore(path, 21, layout)  # client 20 stays out of reach of the damage
        put = {c: np.full(3, c + 0.5, np.float32) for c in (0, 4, 9, 13, 19)}
        for c, value in put.items():
            store.put(c, "w", value)
        store.close()
        if damage == "data":
            os.truncate(path / "client-state.f32", min(where, 100))
        elif damage == "index":
            index = _index(path)
            index[where % 20] = entry
            index.flush()
            del index
        elif damage == "owners":
            os.truncate(path / "client-state.owners", where % 48)
        else:
            with open(path / "client-state.owners", "r+b") as f:
                f.seek(where % 40)
                f.write(bytes([byte]))
        store = ClientStateStore(path, 21, layout)
        for client in range(20):
            try:
                got = store.get(client, "w")
            except FailedPrecondition as exc:
                assert f"client {client}'s entry names" in exc.message
                continue
            assert got is None or (client in put and _same_bits(got, put[client]))
        store.put(20, "v", np.ones(2))  # a new slot after the damage: its other state is zeros
        assert store.get(20, "w").tolist() == [0, 0, 0]


class _Died(BaseException):
    """A process's death at a point of ``put``: nothing after it runs. Its files are then what os._exit
    there leaves (writes through a shared map are in the page cache), and unit tests start no processes."""


def _die(*args: Any, **kwargs: Any) -> None:
    raise _Died


class _DyingIndex:
    """The slot table, whose first write dies."""

    def __init__(self, index: np.memmap) -> None:
        self.index = index

    def __getitem__(self, key: int) -> Any:
        return self.index[key]

    def __setitem__(self, key: int, value: int) -> None:
        _die()


def _view_dying_halfway(store: ClientStateStore) -> Callable[..., np.ndarray]:
    real = store._view

    def view(slot: int, name: str, *, mode: str) -> np.ndarray:
        mapped = real(slot, name, mode=mode)
        if mode == "r+":
            flat = mapped.reshape(-1)
            flat[: flat.size // 2] = 99.0
            _die()
        return mapped

    return view


@pytest.mark.parametrize("point", ["after-growing-the-data", "after-the-owner", "mid-first-write", "mid-overwrite"])
def test_a_store_left_by_a_process_killed_mid_put_is_consistent_or_refused(tmp_path, monkeypatch, point: str) -> None:
    layout = {"w": (6,), "v": (2,)}
    store = ClientStateStore(tmp_path, 100, layout)
    store.put(3, "w", np.full(6, 3.0))
    if point == "after-growing-the-data":
        monkeypatch.setattr(os, "pwrite", _die)
    elif point == "after-the-owner":
        store._index = _DyingIndex(store._index)
    else:
        store._view = _view_dying_halfway(store)
    with pytest.raises(_Died):  # it died where it was meant to
        store.put(3 if point == "mid-overwrite" else 42, "w", np.full(6, 99.0))
    monkeypatch.undo()
    del store
    store = ClientStateStore(tmp_path, 100, layout)  # the next process
    torn = {"mid-overwrite": 3, "mid-first-write": 42}.get(point)
    if torn is not None:  # half old (or zeros) and half new: refused, not read as the client's state
        with pytest.raises(FailedPrecondition, match=rf"client {torn}'s entry names slot \d, whose last write never"):
            store.get(torn, "w")
    if torn != 3:
        assert store.get(3, "w").tolist() == [3.0] * 6 and store.get(3, "v").tolist() == [0.0, 0.0]
    if torn != 42:  # the slot it took is left unused, never handed to it or anyone else
        assert store.get(42, "w") is None
        store.put(42, "w", np.full(6, 42.0))
        assert store.get(42, "w").tolist() == [42.0] * 6
    store.put(8, "w", np.full(6, 8.0))
    store.put(7, "v", np.full(2, 7.0))
    assert store.get(8, "w").tolist() == [8.0] * 6 and store.get(7, "w").tolist() == [0.0] * 6
    assert store.get(7, "v").tolist() == [7.0, 7.0]
    assert json.loads((tmp_path / "client-state.layout.json").read_text()) == [["w", [6]], ["v", [2]]]
