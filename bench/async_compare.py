"""Async (FedBuff) against sync rounds, on a real deployment whose clients differ 10x in speed.

A reducer, combiners and digits clients run as processes on 127.0.0.1 (``fedn.launcher``). Client
``i`` takes ``t_i`` seconds per task (its training, then a sleep up to ``t_i``), with ``t`` spread
evenly from ``slowest_s / spread`` to ``slowest_s``. Both modes do the same client work: sync runs
``sync_rounds`` rounds of every client; async runs as many versions as make the same number of
client updates (``sync_rounds * clients / buffer_size``). Every global version is evaluated on the
held-out digits, so the JSON has the accuracy curve against wall time for both.

    python -m bench.async_compare            # 8 clients, 2 combiners, 0.2..2.0 s per task
    python -m bench.async_compare --smoke    # seconds; what make test runs
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from tempfile import TemporaryDirectory

from examples.digits import DigitsClient
from fedn.cli.sessions import wait_for_session
from fedn.codec import decode_model, encode_model
from fedn.launcher import FederationSpec, LocalFederation
from fedn.records import Round, RoundStatus, SessionStatus

__all__ = ["PacedDigitsClient", "compare", "main"]


class PacedDigitsClient(DigitsClient):
    """The digits client, held to at least ``train_seconds`` per task: a slow device or link."""

    def __init__(self, train_seconds: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.train_seconds = float(train_seconds)

    def train(self, params, config):
        started = time.monotonic()
        result = super().train(params, config)
        time.sleep(max(0.0, self.train_seconds - (time.monotonic() - started)))
        return result


def _accuracy(evaluator: DigitsClient, blob: bytes) -> float:
    params = {k: v.copy() for k, v in decode_model(blob).items()}
    return float(evaluator.evaluate(params, {})[2]["accuracy"])


def _summary(api, evaluator: DigitsClient, session_id: str, started: float) -> dict:
    session = api.get_session(session_id)
    if session.status != SessionStatus.DONE:
        raise RuntimeError(f"session {session_id} {session.status}: {session.error}")
    rounds: list[Round] = [r for r in api.list_rounds(session_id) if r.status == RoundStatus.DONE]
    wall = max(r.finished_at for r in rounds) - started
    updates = sum(r.num_updates for r in rounds)
    curve = [[round(r.finished_at - started, 3), _accuracy(evaluator, api.download_model(r.model_out))] for r in rounds]
    return {
        "versions": len(rounds),
        "client_updates": updates,
        "wall_s": round(wall, 3),
        "versions_per_min": round(60 * len(rounds) / wall, 2),
        "client_updates_per_min": round(60 * updates / wall, 2),
        "final_accuracy": round(curve[-1][1], 4),
        "best_accuracy": round(max(a for _, a in curve), 4),
        "accuracy_curve": curve,
    }


def compare(
    *,
    clients: int = 8,
    combiners: int = 2,
    slowest_s: float = 2.0,
    spread: float = 10.0,
    sync_rounds: int = 8,
    buffer_size: int = 2,
    epochs: int = 2,
    alpha: float = 1.0,
    seed: int = 7,
) -> dict:
    fastest_s = slowest_s / spread
    step = (slowest_s - fastest_s) / max(1, clients - 1)
    speeds = [round(fastest_s + i * step, 4) for i in range(clients)]
    client_args = [f"alpha={alpha}", f"seed={seed}"]
    evaluator = DigitsClient(split="test")
    with TemporaryDirectory(prefix="fedn-bench-async-") as tmp:
        spec = FederationSpec(
            client="bench.async_compare:PacedDigitsClient",
            client_args=client_args,
            num_combiners=combiners,
            num_clients=clients,
            workdir=Path(tmp),
            log_level="WARNING",
        )
        with LocalFederation(spec) as fed:
            for i, seconds in enumerate(speeds):
                fed.start_client(i, [f"train_seconds={seconds}"])
            fed.wait_for_clients(clients, timeout_s=180)
            with fed.api() as api:
                seed_model = api.upload_model(encode_model(DigitsClient(seed=seed).initial_parameters()))
                common = {
                    "min_clients": clients,
                    "round_timeout_s": 30 * slowest_s + 30,
                    "model_id": seed_model.id,
                    "config": {"epochs": epochs},
                }
                results = {}
                for mode, params in (
                    ("sync", {"rounds": sync_rounds}),
                    (
                        "async",
                        {"rounds": max(1, sync_rounds * clients // buffer_size), "buffer_size": buffer_size},
                    ),
                ):
                    started = time.time()
                    session = api.start_session(mode=mode, **params, **common)
                    wait_for_session(api, session.id, poll_s=0.2, timeout_s=params["rounds"] * (slowest_s + 30))
                    results[mode] = _summary(api, evaluator, session.id, started)
                seed_accuracy = _accuracy(evaluator, api.download_model(seed_model.id))
    sync, async_ = results["sync"], results["async"]
    return {
        "bench": "async_vs_sync",
        "clients": clients,
        "combiners": combiners,
        "task_seconds": speeds,
        "speed_spread": spread,
        "buffer_size": buffer_size,
        "epochs": epochs,
        "dirichlet_alpha": alpha,
        "seed_accuracy": round(seed_accuracy, 4),
        "sync": sync,
        "async": async_,
        "versions_per_min_ratio": round(async_["versions_per_min"] / sync["versions_per_min"], 2),
        "client_updates_per_min_ratio": round(async_["client_updates_per_min"] / sync["client_updates_per_min"], 2),
        "final_accuracy_diff": round(async_["final_accuracy"] - sync["final_accuracy"], 4),
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: 2 clients, 1 combiner, seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        row = compare(clients=2, combiners=1, slowest_s=0.5, sync_rounds=2, buffer_size=1, epochs=1)
    else:
        row = compare()
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
