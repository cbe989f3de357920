"""Real gRPC: a reducer and 2 combiners as processes under emulated clients (see fedn.loadtest).

Rows: 100 and 1000 clients with a 100k-parameter model (seconds per round, combiner memory growth),
and 10 clients with a 10M-parameter (40 MB) model (seconds per round, peak combiner memory against
the model size); each with TLS and tokens (the default) and in plaintext, run one after the other, and
a ``tls_vs_plain`` row per workload with the ratios. Each prints one JSON line.
"""

from __future__ import annotations

import argparse
import json

from fedn.loadtest import run_load


def run(params: int, client_counts: list[int], rounds: int, combiners: int = 2, secure: bool = True) -> list[dict]:
    return [run_load(n, combiners, params, rounds, secure=secure).row() for n in client_counts]


def _ratio(tls: dict, plain: dict) -> dict:
    """TLS over plaintext for one workload: round time and peak combiner memory."""
    return {
        "bench": "grpc_load_tls_vs_plain",
        "clients": tls["clients"],
        "params": tls["params"],
        "s_per_round": round(tls["s_per_round_steady"] / plain["s_per_round_steady"], 3),
        "combiner_rss_peak": round(max(tls["combiner_rss_mb_peak"]) / max(plain["combiner_rss_mb_peak"]), 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=int, default=100_000)
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--big-params", type=int, default=10_000_000, help="the large-model row; 0 skips it")
    parser.add_argument("--big-clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tls", choices=["both", "on", "off"], default="both", help="TLS and tokens [default both]")
    args = parser.parse_args(argv)
    modes = {"both": [True, False], "on": [True], "off": [False]}[args.tls]
    by_mode = {secure: _rows(args, secure) for secure in modes}
    rows = [row for secure in modes for row in by_mode[secure]]
    if len(modes) == 2:
        rows += [_ratio(t, p) for t, p in zip(by_mode[True], by_mode[False], strict=True)]
    for row in rows:
        print(json.dumps(row), flush=True)


def _rows(args: argparse.Namespace, secure: bool) -> list[dict]:
    rows = run(args.params, args.clients, args.rounds, secure=secure)
    if len(rows) >= 2:
        small, large = rows[0], rows[-1]
        growth = max(large["combiner_rss_mb_peak"]) / max(small["combiner_rss_mb_peak"]) - 1
        large[f"combiner_rss_growth_vs_{small['clients']}_clients"] = round(growth, 3)
    if args.big_params:
        big = run_load(args.big_clients, 2, args.big_params, args.rounds, secure=secure).row()
        model_mb = args.big_params * 4 / 2**20
        big["combiner_rss_peak_over_idle_in_models"] = round(
            max(p - i for p, i in zip(big["combiner_rss_mb_peak"], big["combiner_rss_mb_idle"], strict=True))
            / model_mb,
            2,
        )
        rows.append(big)
    return rows


if __name__ == "__main__":
    main()
