"""Real gRPC at scale: 10,000 emulated clients over 4 combiners, a 100k-parameter model, TLS and tokens.

Targets (issue 17): at most 30 s a round, at most 400 MiB peak RSS per combiner, and no client errors:
every round folds every client's update (``fedn.loadtest.run_load`` fails the run otherwise), and no
call of an emulated client fails, apart from idle task streams a combiner ends to rebalance (counted in
``rebalanced_streams``; the client asks the reducer again, as real ones do). Prints one JSON line: the
``grpc_load`` row of the run plus the targets and whether each held.
"""

from __future__ import annotations

import argparse
import json

from fedn.loadtest import run_load

__all__ = ["main"]

TARGET_S_PER_ROUND = 30.0
TARGET_COMBINER_RSS_MB = 400.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--combiners", type=int, default=4)
    parser.add_argument("--params", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--insecure", action="store_true", help="plaintext, no tokens [default: TLS and tokens]")
    args = parser.parse_args(argv)
    row = run_load(args.clients, args.combiners, args.params, args.rounds, secure=not args.insecure).row()
    row["bench"] = "grpc_scale"
    row["target_s_per_round"] = TARGET_S_PER_ROUND
    row["target_combiner_rss_mb"] = TARGET_COMBINER_RSS_MB
    row["met"] = {
        "s_per_round": row["s_per_round_steady"] <= TARGET_S_PER_ROUND,
        "combiner_rss": max(row["combiner_rss_mb_peak"]) <= TARGET_COMBINER_RSS_MB,
        "no_client_errors": row["client_errors"] == 0,
    }
    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
