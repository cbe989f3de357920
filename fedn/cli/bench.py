"""``fedn bench load``: measure a real deployment under many emulated clients."""

from __future__ import annotations

import argparse
import json

__all__ = ["register"]


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("bench", help="measure the deployed system itself")
    sub = p.add_subparsers(dest="bench_command", metavar="BENCH", required=True)
    load = sub.add_parser(
        "load",
        help="a reducer and combiners as processes, N emulated clients over real gRPC",
        description=(
            "Start a reducer and --combiners combiners on 127.0.0.1 (embedded stores), connect --clients "
            "lightweight emulated clients (assigned by the reducer, over real gRPC, trivial train step), run "
            "--rounds rounds and print one JSON line: seconds per round and combiner memory (idle, with the "
            "clients connected, and peak)."
        ),
        epilog="example: fedn bench load --clients 1000 --combiners 2",
    )
    load.add_argument("--clients", type=int, default=1000, help="[default 1000]")
    load.add_argument("--combiners", type=int, default=2, help="[default 2]")
    load.add_argument("--params", type=int, default=100_000, help="float32 parameters of the model [default 100000]")
    load.add_argument("--rounds", type=int, default=3, help="[default 3]")
    load.add_argument("--round-timeout", type=float, default=300.0, help="seconds [default 300]")
    load.set_defaults(func=_load)


def _load(args: argparse.Namespace) -> int:
    from fedn.errors import InvalidArgument
    from fedn.loadtest import run_load

    if min(args.clients, args.combiners, args.params, args.rounds) < 1:
        raise InvalidArgument("--clients, --combiners, --params and --rounds must be at least 1")
    result = run_load(
        args.clients,
        args.combiners,
        args.params,
        args.rounds,
        round_timeout_s=args.round_timeout,
        on_event=lambda m: print(f"  {m}", flush=True),
    )
    print(json.dumps(result.row()), flush=True)
    return 0
