"""Simulator benchmarks; each prints one JSON line.

- ``sim_trivial``: a 100k-parameter float32 model with a trivial train step (bench.workloads), FedAvg,
  every client every round, 1000 and 10,000 clients: seconds per round (median after the first) and
  the peak resident memory of the driver and all workers together.
- ``sim_digits``: the digits MLP, 100 clients, Dirichlet(0.3) label skew, 30 rounds: final accuracy
  (central, and federated: every client evaluates each round), wall time, and the wall time of the
  federated evaluations.
- ``sim_async_vs_sync``: digits, 100 clients, half of them 10x slower (modelled clock): sync rounds
  against async (FedBuff) versions for the same client work, with global versions per modelled
  minute and the accuracy reached.
"""

from __future__ import annotations

import argparse
import json
import statistics

from bench.workloads import digits_spec, synthetic_spec
from fedn.sim import Simulation, auto_workers, parse_spec


def steady(rounds: list[dict]) -> float:
    times = [r["wall_s"] for r in rounds]
    return statistics.median(times[1:] or times)


def trivial(clients: int, params: int = 100_000, rounds: int = 4, workers: int | None = None) -> dict:
    spec = synthetic_spec(clients, params, rounds, workers)
    result = Simulation(spec).run()
    return {
        "bench": "sim_trivial",
        "clients": clients,
        "params": params,
        "workers": spec.workers,
        "rounds": rounds,
        "s_per_round": [round(r["wall_s"], 3) for r in result.rounds],
        "s_per_round_steady": round(steady(result.rounds), 3),
        "peak_rss_mb_all_processes": result.peak_rss_mb,
        "wall_s": round(result.wall_s, 2),
    }


def digits(clients: int = 100, rounds: int = 30, alpha: float = 0.3, strategy: str = "fedavg", **extra) -> dict:
    spec = digits_spec(clients, rounds, alpha, strategy=strategy, **extra)
    result = Simulation(spec).run()
    curve = [round(r["accuracy"], 4) for r in result.rounds]
    reached = next((r["round"] for r in result.rounds if r["accuracy"] >= 0.85), None)
    return {
        "bench": "sim_digits",
        "clients": clients,
        "alpha": alpha,
        "strategy": strategy,
        "strategy_config": spec.strategy_config,
        "rounds": rounds,
        "final_accuracy": curve[-1],
        "best_accuracy": max(curve),
        "first_round_at_0.85": reached,
        "accuracy_curve": curve,
        "final_eval_accuracy": round(result.rounds[-1]["eval_accuracy"], 4) if spec.federated_eval else None,
        "s_per_round_steady": round(steady(result.rounds), 3),
        "wall_s": round(result.wall_s, 1),
        "eval_wall_s": round(sum(r.get("eval_wall_s", 0.0) for r in result.rounds), 1),
    }


def async_vs_sync(
    clients: int = 100, sync_rounds: int = 15, buffer_size: int = 10, combiners: int = 2, eta: float = 0.5
) -> dict:
    """The same client work both ways; async with a server learning rate ``eta`` (FedAvgM, no momentum)."""
    common = dict(
        client="examples.digits:DigitsClient",
        clients=clients,
        combiners=combiners,
        partition="dirichlet",
        alpha=1.0,
        seed=7,
        workers=auto_workers(),
        config={"epochs": 2},
        heterogeneity={"slow_share": 0.5, "slowdown": 10.0, "task_time_s": 1.0},
    )
    out: dict = {"bench": "sim_async_vs_sync", "clients": clients, "slow_share": 0.5, "slowdown": 10}
    runs = {
        "sync": parse_spec(**common, rounds=sync_rounds),
        "async": parse_spec(
            **common,
            rounds=max(1, sync_rounds * clients // buffer_size),
            mode="async",
            buffer_size=buffer_size,
            strategy="fedavgm",
            strategy_config={"eta": eta, "momentum": 0.0},
        ),
    }
    for mode, spec in runs.items():
        result = Simulation(spec).run()
        modelled = sum(r["modelled_s"] for r in result.rounds)
        curve = [round(r["accuracy"], 4) for r in result.rounds]
        out[mode] = {
            "versions": len(result.rounds),
            "client_updates": sum(r["updates"] for r in result.rounds),
            "modelled_s": round(modelled, 2),
            "versions_per_modelled_min": round(60 * len(result.rounds) / modelled, 2),
            "final_accuracy": curve[-1],
            "best_accuracy": max(curve),
            "wall_s": round(result.wall_s, 1),
        }
    out["versions_per_min_ratio"] = round(
        out["async"]["versions_per_modelled_min"] / out["sync"]["versions_per_modelled_min"], 2
    )
    out["final_accuracy_diff"] = round(out["async"]["final_accuracy"] - out["sync"]["final_accuracy"], 4)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check the benchmark still runs")
    args = parser.parse_args(argv)
    if args.smoke:
        rows = [
            trivial(20, params=1000, rounds=2, workers=2),
            digits(clients=6, rounds=2),
            async_vs_sync(clients=6, sync_rounds=2, buffer_size=2),
        ]
    else:
        rows = [trivial(1000), trivial(10_000, rounds=3), digits(), async_vs_sync()]
    for row in rows:
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
