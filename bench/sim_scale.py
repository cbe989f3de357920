"""Simulator scale benchmarks (issue #17); each prints one JSON line.

- ``sim_scale_declared``: 1,000,000 declared clients, 1000 sampled per round (``fraction`` 0.001),
  a 100k-parameter model (bench.workloads), FedAvg. Targets: at most 2 s a round, 2 GiB in all.
- ``sim_scale_all``: 100,000 clients, every one every round, the same model. Targets: at most 6 s a
  round, 1 GiB in all.

Each line has the steady seconds per round (median after the first), the CPU seconds a round took
in the driver and the workers (on a shared machine, the figure that does not depend on the load), the
peak resident memory of the driver and its workers together (sampled) and of the driver alone (the
kernel's high-water mark), and the driver's resident memory after round 2 and after the last round:
nothing per client is kept between rounds, so the two stay close.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
from pathlib import Path

from bench.workloads import synthetic_spec
from fedn.sim import Simulation
from fedn.sim.memory import cpu_s, peak_rss_mb, rss_mb


def _tree_cpu_s() -> float:
    """CPU seconds of this process and its children so far (the workers; /proc, else this process)."""
    me = os.getpid()
    try:
        children = [int(p) for p in Path(f"/proc/{me}/task/{me}/children").read_text().split()]
    except OSError:
        children = []
    return cpu_s(me) + sum(cpu_s(c) for c in children)


def scale(name: str, clients: int, fraction: float, rounds: int, params: int = 100_000) -> dict:
    spec = synthetic_spec(clients, params, rounds, fraction=fraction)
    driver_mb: list[float] = []
    cpu = [_tree_cpu_s()]

    def on_round(row: dict) -> None:
        driver_mb.append(round(rss_mb(os.getpid()), 1))
        cpu.append(_tree_cpu_s())

    result = Simulation(spec).run(on_round=on_round)
    times = [r["wall_s"] for r in result.rounds]
    cpu_per_round = [b - a for a, b in itertools.pairwise(cpu)]
    return {
        "bench": name,
        "clients": clients,
        "sampled_per_round": result.rounds[0]["selected"],
        "params": params,
        "workers": spec.workers,
        "rounds": rounds,
        "updates": [r["updates"] for r in result.rounds],
        "s_per_round": [round(t, 3) for t in times],
        "s_per_round_steady": round(statistics.median(times[1:] or times), 3),
        # CPU seconds of driver and workers per round (median after the first): the machine's share
        # of the work, whatever else runs; divided by the workers, the round time on idle cores
        "cpu_s_per_round_steady": round(statistics.median(cpu_per_round[1:] or cpu_per_round), 3),
        "peak_rss_mb_all_processes": result.peak_rss_mb,
        "driver_peak_rss_mb": round(peak_rss_mb(os.getpid()), 1),
        "driver_rss_mb_round_2": driver_mb[min(1, len(driver_mb) - 1)],
        "driver_rss_mb_last_round": driver_mb[-1],
        "load_average_1min": round(os.getloadavg()[0], 2),  # other work on the machine slows every figure
        "wall_s": round(result.wall_s, 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check the benchmark still runs")
    parser.add_argument("--only", choices=("declared", "all"), help="run one of the two workloads")
    args = parser.parse_args(argv)
    if args.smoke:
        runs = {
            "declared": lambda: scale("sim_scale_declared", 100_000, 0.001, rounds=3, params=1000),
            "all": lambda: scale("sim_scale_all", 200, 1.0, rounds=2, params=1000),
        }
    else:
        runs = {
            "declared": lambda: scale("sim_scale_declared", 1_000_000, 0.001, rounds=8),
            "all": lambda: scale("sim_scale_all", 100_000, 1.0, rounds=4),
        }
    for name, run in runs.items():
        if args.only in (None, name):
            print(json.dumps(run()), flush=True)


if __name__ == "__main__":
    main()
