"""The sim benchmark's workload on Flower: run by ``bench.flower_compare`` inside its own venv.

Same model (one float32 tensor), same trivial train step and weights as ``bench.workloads``,
FedAvg over every client each round. It imports only flwr and numpy (never fedn). Prints one JSON
line with the seconds between the ends of consecutive rounds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation


def build(params: int, clients: int, rounds: int, stamps: list[float]) -> tuple[ServerApp, ClientApp]:
    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        w = msg.content["arrays"].to_numpy_ndarrays()[0].copy()
        target = np.float32(int(context.node_config["partition-id"]) % 10) / 10
        w += np.float32(0.1) * (target - w)
        content = RecordDict(
            {
                "arrays": ArrayRecord([w]),
                "metrics": MetricRecord({"train_loss": float(abs(target - w[0])), "num-examples": 10}),
            }
        )
        return Message(content=content, reply_to=msg)

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=clients,
            min_available_nodes=clients,
        )

        def stamp(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            stamps.append(time.perf_counter())
            return MetricRecord({"round": server_round})

        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord([np.zeros(params, dtype=np.float32)]),
            num_rounds=rounds,
            evaluate_fn=stamp,
        )

    return server_app, client_app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()
    stamps: list[float] = []
    server_app, client_app = build(args.params, args.clients, args.rounds, stamps)
    start = time.perf_counter()
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=args.clients,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": args.cpus}},
    )
    per_round = [b - a for a, b in itertools.pairwise(stamps)]  # stamps[0] is the initial model
    print(
        json.dumps(
            {
                "framework": "flwr",
                "clients": args.clients,
                "params": args.params,
                "rounds": len(per_round),
                "s_per_round": per_round,
                "wall_s": time.perf_counter() - start,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
