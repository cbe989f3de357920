"""What federated evaluation costs: the digits demo's federation (2 combiners, 4 clients as processes, TLS
and tokens) runs the same session with the clients evaluating every round and without, alternately,
``--repeats`` times each; prints one JSON line with the session wall times and their ratio (target:
evaluation every round costs at most 25% more wall time)."""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from fedn.cli.sessions import wait_for_session
from fedn.codec import encode_model
from fedn.launcher import FederationSpec, LocalFederation
from fedn.records import SessionStatus

__all__ = ["main"]

CLIENT = "examples.digits:DigitsClient"


def _session_s(fed: LocalFederation, seed_id: str, rounds: int, evaluate_every: int) -> tuple[float, float | None]:
    """Wall seconds from asking for the session to its end, and the last federated accuracy (if any)."""
    with fed.api() as api:
        asked = time.monotonic()
        session = api.start_session(
            rounds=rounds, min_clients=4, round_timeout_s=120.0, model_id=seed_id, evaluate_every=evaluate_every
        )
        session = wait_for_session(api, session.id, poll_s=0.02, timeout_s=600)
        took = time.monotonic() - asked
        if session.status != SessionStatus.DONE:
            raise RuntimeError(f"session {session.id} {session.status}: {session.error}")
        last = list(api.list_rounds(session.id))[-1]
    accuracy = last.evaluation.metrics["accuracy"].mean if last.evaluation else None
    return took, accuracy


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    from examples.digits import DigitsClient

    with tempfile.TemporaryDirectory() as tmp:
        spec = FederationSpec(client=CLIENT, num_combiners=2, num_clients=4, workdir=Path(tmp) / "fed")
        with LocalFederation(spec) as fed:
            fed.start_clients()
            fed.wait_for_clients(4, timeout_s=120)
            with fed.api() as api:
                seed = api.upload_model(encode_model(DigitsClient().initial_parameters()))
            _session_s(fed, seed.id, 2, 1)  # warm-up: every client has imported torch and read its data
            times: dict[int, list[float]] = {0: [], 1: []}
            accuracy = None
            for repeat in range(args.repeats):
                for every in (0, 1) if repeat % 2 == 0 else (1, 0):
                    took, acc = _session_s(fed, seed.id, args.rounds, every)
                    times[every].append(took)
                    accuracy = acc if acc is not None else accuracy
    without, with_eval = statistics.median(times[0]), statistics.median(times[1])
    print(
        json.dumps(
            {
                "bench": "evaluation_cost",
                "clients": 4,
                "combiners": 2,
                "rounds": args.rounds,
                "repeats": args.repeats,
                "session_s_without_evaluation": [round(t, 3) for t in times[0]],
                "session_s_evaluating_every_round": [round(t, 3) for t in times[1]],
                "ratio": round(with_eval / without, 3),
                "final_federated_accuracy": None if accuracy is None else round(accuracy, 4),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
