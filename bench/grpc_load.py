"""Real gRPC: a reducer and 2 combiners as processes under emulated clients (see fedn.loadtest).

Rows: 100 and 1000 clients with a 100k-parameter model (seconds per round, combiner memory growth),
and 10 clients with a 10M-parameter (40 MB) model (seconds per round, peak combiner memory against
the model size); each with TLS and tokens (the default) and in plaintext, and a ``tls_vs_plain`` row
per workload with the ratios. Each prints one JSON line.

With ``--repeats N`` every workload runs N times in each mode, interleaved (TLS then plaintext, then
plaintext then TLS, ...) so that a machine that slows down or speeds up during the run weighs on
both modes alike; the ratio is taken between the medians of all steady rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics

from fedn.loadtest import run_load


def run(params: int, client_counts: list[int], rounds: int, combiners: int = 2, secure: bool = True) -> list[dict]:
    return [run_load(n, combiners, params, rounds, secure=secure).row() for n in client_counts]


def _steady(row: dict) -> list[float]:
    return row["s_per_round"][1:] or row["s_per_round"]


def _ratio(tls: list[dict], plain: list[dict]) -> dict:
    """TLS over plaintext for one workload over all its repeats: round time and peak combiner memory."""
    tls_s = statistics.median(t for row in tls for t in _steady(row))
    plain_s = statistics.median(t for row in plain for t in _steady(row))
    return {
        "bench": "grpc_load_tls_vs_plain",
        "clients": tls[0]["clients"],
        "params": tls[0]["params"],
        "repeats": len(tls),
        "s_per_round_tls": round(tls_s, 3),
        "s_per_round_plain": round(plain_s, 3),
        "s_per_round": round(tls_s / plain_s, 3),
        "s_per_round_by_repeat": [
            round(t["s_per_round_steady"] / p["s_per_round_steady"], 3) for t, p in zip(tls, plain, strict=True)
        ],
        "combiner_rss_peak": round(
            max(max(r["combiner_rss_mb_peak"]) for r in tls) / max(max(r["combiner_rss_mb_peak"]) for r in plain), 3
        ),
        "combiner_cpu_s_per_round": round(
            statistics.median(r["cpu_s_per_round"]["combiners"] for r in tls)
            / statistics.median(r["cpu_s_per_round"]["combiners"] for r in plain),
            3,
        ),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=int, default=100_000)
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--big-params", type=int, default=10_000_000, help="the large-model row; 0 skips it")
    parser.add_argument("--big-clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tls", choices=["both", "on", "off"], default="both", help="TLS and tokens [default both]")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each workload in each mode, interleaved")
    args = parser.parse_args(argv)
    modes = {"both": [True, False], "on": [True], "off": [False]}[args.tls]
    by_mode: dict[bool, list[list[dict]]] = {secure: [] for secure in modes}
    for repeat in range(max(1, args.repeats)):
        for secure in modes if repeat % 2 == 0 else modes[::-1]:
            rows = _rows(args, secure)
            for row in rows:
                row["repeat"] = repeat
                print(json.dumps(row), flush=True)
            by_mode[secure].append(rows)
    if len(modes) == 2:
        for workload in range(len(by_mode[True][0])):
            tls = [rows[workload] for rows in by_mode[True]]
            plain = [rows[workload] for rows in by_mode[False]]
            print(json.dumps(_ratio(tls, plain)), flush=True)


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
