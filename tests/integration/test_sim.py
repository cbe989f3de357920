"""The simulator end to end: real worker processes, the real aggregation code, reproducible results."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from fedn.errors import FednError, InvalidArgument
from fedn.sim import Simulation, parse_spec

SYNTH = "bench.workloads:SyntheticClient"


def _spec(**overrides):
    fields = dict(client=SYNTH, client_args={"params": 1000}, eval_args={}, clients=20, combiners=2, rounds=2)
    fields.update(overrides)
    return parse_spec(**fields)


def _expected_after_one_round(ids: list[int]) -> float:
    # every SyntheticClient moves w=0 by 0.1 * (partition % 10) / 10 and weighs 10 examples
    return float(np.mean([np.float32(0.1) * (np.float32(i % 10) / 10) for i in ids]))


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("combiners", [1, 3])
def test_one_round_is_flat_fedavg_over_all_clients(workers: int, combiners: int) -> None:
    result = Simulation(_spec(rounds=1, workers=workers, combiners=combiners)).run()
    assert result.rounds[0]["updates"] == 20
    assert np.allclose(result.model["w"], _expected_after_one_round(list(range(20))), atol=1e-7)
    assert result.model["w"].dtype == np.float32


def test_same_seed_and_workers_give_a_bit_identical_model() -> None:
    spec = dict(
        client="examples.digits:DigitsClient",
        config={"epochs": 1},
        clients=12,
        combiners=2,
        rounds=2,
        fraction=0.5,
        partition="dirichlet",
        alpha=0.3,
        seed=7,
        workers=2,
        eval_args={"split": "test"},
    )
    a = Simulation(parse_spec(**spec)).run()
    b = Simulation(parse_spec(**spec)).run()
    for name in a.model:
        assert a.model[name].tobytes() == b.model[name].tobytes(), name
    assert [r["accuracy"] for r in a.rounds] == [r["accuracy"] for r in b.rounds]
    assert [r["eval_accuracy"] for r in a.rounds] == [r["eval_accuracy"] for r in b.rounds]
    c = Simulation(parse_spec(**{**spec, "seed": 8})).run()
    assert any(a.model[n].tobytes() != c.model[n].tobytes() for n in a.model)


def test_sampling_takes_the_fraction_spread_over_groups() -> None:
    result = Simulation(_spec(clients=40, combiners=4, fraction=0.25, rounds=3, seed=3)).run()
    assert [r["selected"] for r in result.rounds] == [10, 10, 10]
    assert all(r["updates"] == 10 for r in result.rounds)


def test_dropouts_and_stragglers_follow_the_profiles() -> None:
    het = {"dropout": 1.0, "dropout_share": 0.25, "slow_share": 0.25, "slowdown": 10, "deadline_s": 0.05}
    # a normal client's modelled time is 1e-3 s * 10 examples = 0.01 s; a slow one 0.1 s > deadline
    result = Simulation(_spec(clients=40, rounds=2, heterogeneity=het, seed=1)).run()
    for row in result.rounds:
        assert row["dropped"] == 10  # every flaky client misses every round at p=1
        assert 0 < row["stragglers"] <= 10
        assert row["updates"] == 40 - row["dropped"] - row["stragglers"]
        assert row["modelled_s"] == 0.05
    fast = Simulation(_spec(clients=40, rounds=1, heterogeneity={"slow_share": 0.0})).run()
    assert fast.rounds[0]["modelled_s"] == pytest.approx(0.01)


def test_failing_and_invalid_clients_are_counted_not_fatal() -> None:
    result = Simulation(_spec(client="tests.sim_clients:FlakyClient", rounds=1)).run()
    row = result.rounds[0]
    assert (row["failed"], row["updates"]) == (10, 10)
    assert np.allclose(result.model["w"], _expected_after_one_round(list(range(0, 20, 2))), atol=1e-7)
    assert "partition 1 is broken" in result.failures[0][2]

    nan = Simulation(_spec(client="tests.sim_clients:NaNClient", rounds=1, workers=2)).run()
    assert nan.rounds[0]["failed"] == 1 and np.isfinite(nan.model["w"]).all()
    assert "update rejected" in nan.failures[0][2]


def test_a_client_class_that_always_fails_stops_the_run_with_its_error() -> None:
    with pytest.raises(FednError, match="no data on this device"):
        Simulation(_spec(client="tests.sim_clients:AlwaysFailsClient")).run()


def test_a_dead_worker_is_reported_and_nothing_is_left_running() -> None:
    with pytest.raises(FednError, match=r"worker \d died"):
        Simulation(_spec(client="tests.sim_clients:CrashingClient", workers=2)).run()
    left = subprocess.run(["pgrep", "-f", "fedn.sim.worker"], capture_output=True, text=True).stdout.split()
    assert left == []


@pytest.mark.parametrize(("aggregator", "config"), [("median", {}), ("krum", {"f": 1})])
def test_robust_rules_see_a_whole_group_at_one_worker(aggregator: str, config: dict) -> None:
    # min_clients 5: the deployment's check, 2f + 3 for krum, applies in the simulator too
    spec = _spec(aggregator=aggregator, aggregator_config=config, workers=2, rounds=1, min_clients=5)
    result = Simulation(spec).run()
    assert result.rounds[0]["updates"] == 20
    assert np.isfinite(result.model["w"]).all()


def test_server_optimizer_runs_in_the_simulator() -> None:
    plain = Simulation(_spec(rounds=3)).run()
    adam = Simulation(_spec(rounds=3, strategy="fedadam", strategy_config={"eta": 0.01})).run()
    assert not np.allclose(plain.model["w"], adam.model["w"])


def test_bad_specs_fail_before_any_worker_starts() -> None:
    with pytest.raises(InvalidArgument, match="combiners"):
        _spec(clients=2, combiners=3)
    with pytest.raises(InvalidArgument, match="partitioner"):
        _spec(partition="zipf")
    with pytest.raises(InvalidArgument, match="unknown strategy"):
        Simulation(_spec(strategy="fedsgd"))
    with pytest.raises(InvalidArgument, match="krum with f=1 needs min_clients >= 5"):
        Simulation(_spec(aggregator="krum", aggregator_config={"f": 1}))
    with pytest.raises(InvalidArgument, match="takes no 'partitioner'"):
        Simulation(_spec(client="tests.sim_clients:NoPartitionerClient", partition="iid"))


def test_cli_writes_metrics_and_model(tmp_path) -> None:
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "fedn", "simulate", "--client", "examples.digits:DigitsClient", "--clients", "8",
         "--combiners", "2", "--rounds", "2", "--partition", "iid", "--workers", "2", "--seed", "1",
         "--config", '{"epochs": 1}', "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "round   2/2" in proc.stdout and "eval_accuracy" in proc.stdout
    doc = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in doc["rounds"]] == [1, 2]
    assert doc["spec"]["partition"] == "iid" and doc["summary"]["peak_rss_mb"] > 0
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"round", "updates", "eval_loss", "eval_accuracy", "eval_clients", "wall_s"} <= set(header)
    assert "accuracy" not in header  # central evaluation is --central-eval
    from fedn.codec import decode_model

    assert set(decode_model((out / "model.safetensors").read_bytes())) == {"0.weight", "0.bias", "2.weight", "2.bias"}


def test_cli_refuses_bad_input_in_one_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fedn", "simulate", "--client", SYNTH, "--clients", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.startswith("error: invalid simulation")


def test_partition_command_counts_and_plots(tmp_path) -> None:
    png = tmp_path / "labels.png"
    proc = subprocess.run(
        [sys.executable, "-m", "fedn", "partition", "--labels", "examples.digits.data:train_labels", "--clients", "10",
         "--partition", "shard", "--shards", "2", "--json", "--plot", str(png)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    counts = np.array(json.loads(proc.stdout.splitlines()[0])["counts"])
    assert counts.sum() == 1437 and counts.shape == (10, 10)
    assert ((counts > 0).sum(axis=1) <= 4).all()  # two shards: at most a few labels each
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("workers", [1, 2])
def test_async_versions_fold_staleness_scaled_deltas(workers: int) -> None:
    # equal speeds: every client finishes at once, so each buffer holds all ten, and the second
    # buffer's updates were trained on version 0 while version 1 already existed (staleness 1)
    spec = _spec(mode="async", clients=10, combiners=1, buffer_size=10, rounds=2, workers=workers)
    result = Simulation(spec).run()
    first, second = result.rounds
    assert (first["updates"], first["staleness_max"], second["updates"], second["staleness_mean"]) == (10, 0, 10, 1)
    step = _expected_after_one_round(list(range(10)))
    np.testing.assert_allclose(result.model["w"], step * (1 + 1 / np.sqrt(2)), rtol=1e-6)
    assert first["modelled_time_s"] == pytest.approx(1.0) and second["modelled_time_s"] == pytest.approx(2.0)


def test_async_with_slow_clients_is_reproducible_and_drops_what_is_too_stale() -> None:
    spec = dict(
        mode="async",
        clients=12,
        combiners=2,
        buffer_size=2,
        rounds=40,
        max_staleness=3,
        seed=5,
        workers=2,
        heterogeneity={"slow_share": 0.5, "slowdown": 10, "task_time_s": 0.5},
    )
    a = Simulation(_spec(**spec)).run()
    assert all(r["updates"] == 2 and r["staleness_max"] <= 3 for r in a.rounds)
    assert sum(r["stale"] for r in a.rounds) > 0, "slow clients' updates arrive more than 3 versions late"
    times = [r["modelled_time_s"] for r in a.rounds]
    assert times == sorted(times) and times[-1] < 40 * 0.5, "fast clients advance the model between slow ones"
    b = Simulation(_spec(**spec)).run()
    assert a.model["w"].tobytes() == b.model["w"].tobytes()
    assert [r["group"] for r in a.rounds] == [r["group"] for r in b.rounds]


def test_async_option_combinations_are_refused_before_workers_start() -> None:
    with pytest.raises(InvalidArgument, match="mode sync"):
        Simulation(_spec(mode="async", aggregator="median"))
    with pytest.raises(InvalidArgument, match="deadline"):
        _spec(mode="async", heterogeneity={"deadline_s": 1.0})
    with pytest.raises(InvalidArgument, match="only apply to mode async"):
        Simulation(_spec(buffer_size=4))


def test_cli_runs_an_async_simulation(tmp_path) -> None:
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "fedn", "simulate", "--client", SYNTH, "--client-arg", "params=100"),
            *("--clients", "8", "--combiners", "2", "--rounds", "4", "--workers", "1", "--no-eval"),
            *("--mode", "async", "--buffer-size", "2", "--slow-share", "0.5", "--task-time", "0.1"),
            *("--out", str(out), "--no-progress"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "version   4/4" in proc.stdout and "staleness" in proc.stdout
    rows = json.loads((out / "metrics.json").read_text())["rounds"]
    assert [r["round"] for r in rows] == [1, 2, 3, 4] and all("staleness_mean" in r for r in rows)


def test_async_with_every_client_dropping_out_stops_with_the_reason() -> None:
    spec = _spec(mode="async", clients=4, combiners=1, buffer_size=2, heterogeneity={"dropout": 1.0})
    with pytest.raises(FednError, match="every client drops out"):
        Simulation(spec).run()


def _outcome(result) -> tuple[list[dict], dict[str, bytes], list]:
    rows = [{k: v for k, v in row.items() if k not in ("wall_s", "rss_mb", "eval_wall_s")} for row in result.rounds]
    return rows, {name: a.tobytes() for name, a in result.model.items()}, result.failures


@pytest.mark.parametrize(
    "mode_fields",
    [
        {"fraction": 0.5, "heterogeneity": {"dropout": 0.3, "slow_share": 0.25, "deadline_s": 0.05}},
        {"mode": "async", "buffer_size": 2, "heterogeneity": {"dropout": 0.3, "slow_share": 0.5, "task_time_s": 0.5}},
    ],
    ids=["sync", "async"],
)
def test_rows_model_and_failures_follow_from_the_seed(mode_fields: dict) -> None:
    # FlakyClient: failures are part of what must repeat
    spec = dict(client="tests.sim_clients:FlakyClient", clients=16, rounds=4, workers=2, seed=11, **mode_fields)
    first = _outcome(Simulation(_spec(**spec)).run())
    assert first == _outcome(Simulation(_spec(**spec)).run())
    assert first != _outcome(Simulation(_spec(**{**spec, "seed": 12})).run())
