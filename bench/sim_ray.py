"""The simulator on Ray against the local backend in the same run; prints one JSON line.

``sim_ray``: a 2-node Ray cluster on this machine (``ray.cluster_utils.Cluster``, one CPU each),
1000 clients x 100k parameters with the trivial client (bench.workloads), FedAvg, every client every
round, 2 workers both ways: seconds per round (median after the first) of each backend, their ratio
(target ≤ 2), and whether the final models are bit-identical.
"""

from __future__ import annotations

import argparse
import json
import os

from bench.sim import steady
from bench.workloads import synthetic_spec
from fedn.sim import Simulation
from fedn.sim.ray_pool import RayOptions, ray_backend


def compare(clients: int = 1000, params: int = 100_000, rounds: int = 5) -> dict:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # nodes on 127.0.0.1
    import ray
    from ray.cluster_utils import Cluster

    spec = synthetic_spec(clients, params, rounds, workers=2)
    local = Simulation(spec).run()
    node = {"num_cpus": 1, "object_store_memory": 200 * 2**20}
    cluster = Cluster(initialize_head=True, head_node_args=node)
    try:
        cluster.add_node(**node)
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        on_ray = Simulation(spec, make_pool=ray_backend(RayOptions())).run()
    finally:
        ray.shutdown()
        cluster.shutdown()
    local_s, ray_s = steady(local.rounds), steady(on_ray.rounds)
    return {
        "bench": "sim_ray",
        "nodes": 2,
        "clients": clients,
        "params": params,
        "workers": spec.workers,
        "rounds": rounds,
        "local_s_per_round": round(local_s, 3),
        "ray_s_per_round": round(ray_s, 3),
        "ray_s_per_round_all": [round(r["wall_s"], 3) for r in on_ray.rounds],
        "ratio": round(ray_s / local_s, 2),
        "target_ratio": 2.0,
        "bit_identical": all(on_ray.model[n].tobytes() == local.model[n].tobytes() for n in local.model),
        "ray_wall_s": round(on_ray.wall_s, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check the benchmark still runs")
    args = parser.parse_args(argv)
    row = compare(clients=20, params=1000, rounds=2) if args.smoke else compare()
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
