"""A million declared clients end to end: real workers, a thousand sampled a round, memory flat over rounds."""

from __future__ import annotations

import json
import os

import numpy as np

from bench import sim_scale
from fedn.sim import Simulation, parse_spec
from fedn.sim.memory import rss_mb
from fedn.sim.spec import round_sample

MILLION = 1_000_000


def _spec(**overrides):
    fields = dict(
        client="bench.workloads:SyntheticClient",
        client_args={"params": 10},
        eval_args=None,
        federated_eval=False,
        clients=MILLION,
        combiners=2,
        fraction=0.001,
        rounds=6,
        workers=2,
        seed=4,
    )
    return parse_spec(**{**fields, **overrides})


def test_a_million_declared_clients_train_the_sampled_thousand_with_flat_memory() -> None:
    spec = _spec()
    driver_mb: list[float] = []
    result = Simulation(spec).run(on_round=lambda row: driver_mb.append(rss_mb(os.getpid())))
    assert [r["round"] for r in result.rounds] == [1, 2, 3, 4, 5, 6]
    assert all(r["status"] == "done" and r["selected"] == r["updates"] == 1000 for r in result.rounds)
    assert all(r["dropped"] == r["failed"] == 0 for r in result.rounds)
    # SyntheticClient: w <- w + 0.1 (target - w), target = (id % 10) / 10, every client weighs the same
    w = 0.0
    for r in range(1, 7):
        ids = [cid for ids in round_sample(spec, r) for cid in ids]
        assert len(ids) == 1000 and max(ids) >= 900_000  # drawn from the whole million
        w = 0.9 * w + 0.1 * float(np.mean([(cid % 10) / 10 for cid in ids]))
    assert np.allclose(result.model["w"], w, atol=1e-5)
    # nothing per client stays between rounds: the driver's memory after round 2 is its memory after round 6
    assert max(driver_mb[1:]) - min(driver_mb[1:]) < 4, driver_mb
    assert result.peak_rss_mb < 1024


def test_flaky_and_slow_clients_among_a_million_are_drawn_reproducibly() -> None:
    spec = _spec(rounds=2, heterogeneity={"dropout": 0.3, "slow_share": 0.5, "slowdown": 4.0, "deadline_s": 0.02})
    first, again = Simulation(spec).run(), Simulation(spec).run()
    for row in first.rounds:
        assert row["selected"] == 1000 and row["failed"] == 0
        assert row["dropped"] + row["updates"] + row["stragglers"] == 1000
        assert 200 < row["dropped"] < 400 and 300 < row["stragglers"] < 700  # 30% flaky, 50% slow miss 0.02 s
    assert [{k: r[k] for k in ("dropped", "stragglers", "updates")} for r in first.rounds] == [
        {k: r[k] for k in ("dropped", "stragglers", "updates")} for r in again.rounds
    ]
    assert np.array_equal(first.model["w"], again.model["w"])


def test_scale_bench_smoke(capsys) -> None:
    sim_scale.main(["--smoke"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["bench"] for r in rows] == ["sim_scale_declared", "sim_scale_all"]
    assert [r["sampled_per_round"] for r in rows] == [100, 200]
    assert all(r["s_per_round_steady"] > 0 and r["driver_rss_mb_last_round"] > 0 for r in rows)
