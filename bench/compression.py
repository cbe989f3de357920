"""Compressed updates on the digits workload: uplink bytes and accuracy per codec.

The run of bench/sim.py's ``digits()`` (100 clients, Dirichlet alpha 0.3, 30 rounds, seed 7, two
combiner groups) once uncompressed and once per codec, each update encoded and folded from its
payload by fedn.compression exactly as a deployment does. One JSON line per codec, then one with the
targets: int8 at least 3.9x fewer uplink bytes and within 0.5 accuracy points of uncompressed; top-k 1%
with error feedback at least 20x fewer and within 2 points (held with momentum correction,
``topk:ratio=0.01,momentum=0.5``). Also the codec's own speed on a
10M-parameter float32 delta (encode, decode_update's checks, and a WeightedMean fold of the result).

``python -m bench.compression [--clients N --rounds R --workers W --no-speed]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from bench.workloads import digits_spec
from fedn.aggregation.weighted_mean import WeightedMean
from fedn.codec import manifest_of
from fedn.compression import decode_update, encode_update, parse_compression
from fedn.sim import Simulation, auto_workers

__all__ = ["codec_speed", "digits_run", "main"]

CODECS = (
    "none",
    "float16",
    "int8:block=256",
    "topk:ratio=0.01",
    "topk:ratio=0.01,momentum=0.5",
    "topk:ratio=0.01,warmup=3",
    "topk:ratio=0.02",
)
# (min bytes ratio, max accuracy drop); the warm-up (25%, 6.25%, 1.5625% in rounds 1-3) is counted in the bytes.
# Top-k 1% with momentum correction (Deep Gradient Compression) is the one that holds the thresholds
# at 1%; plain error feedback needs 2% on this run.
TARGETS = {
    "int8:block=256": (3.9, 0.5),
    "topk:ratio=0.01": (20.0, 2.0),
    "topk:ratio=0.01,momentum=0.5": (20.0, 2.0),
    "topk:ratio=0.01,warmup=3": (20.0, 2.0),
    "topk:ratio=0.02": (20.0, 2.0),
}


def digits_run(compression: str, *, clients: int, rounds: int, workers: int, alpha: float = 0.3) -> dict:
    """One digits simulation with ``compression`` on the updates; its bytes, accuracy and time."""
    spec = digits_spec(clients, rounds, alpha, workers, compression=compression)
    result = Simulation(spec).run()
    last = result.rounds[-1]
    return {
        "bench": "compression_digits",
        "compression": spec.compression,
        "clients": clients,
        "rounds": rounds,
        "alpha": alpha,
        "uplink_bytes_per_client_round": round(result.traffic["uplink_bytes_per_client"], 1),
        "uplink_bytes": result.traffic["uplink_bytes"],
        "final_accuracy": round(last["accuracy"], 4),
        "final_eval_accuracy": round(last["eval_accuracy"], 4),
        "accuracy_curve": [round(r["accuracy"], 4) for r in result.rounds],
        "wall_s": round(result.wall_s, 1),
    }


def compare(runs: list[dict]) -> list[dict]:
    """Each run against the uncompressed one: bytes ratio, accuracy drop (points), target met."""
    plain = next(r for r in runs if r["compression"] == "none")
    out = []
    for run in runs:
        ratio = plain["uplink_bytes_per_client_round"] / run["uplink_bytes_per_client_round"]
        drop = 100 * (plain["final_accuracy"] - run["final_accuracy"])
        eval_drop = 100 * (plain["final_eval_accuracy"] - run["final_eval_accuracy"])
        row = {**run, "bytes_ratio": round(ratio, 2), "accuracy_drop_points": round(drop, 2)}
        row["eval_accuracy_drop_points"] = round(eval_drop, 2)
        if run["compression"] in TARGETS:
            min_ratio, max_drop = TARGETS[run["compression"]]
            row["target"] = f">= {min_ratio}x fewer bytes, within {max_drop} points"
            row["target_met"] = bool(ratio >= min_ratio and drop <= max_drop)
        out.append(row)
    return out


def codec_speed(size: int = 10_000_000) -> list[dict]:
    """Milliseconds to encode a ``size``-parameter float32 update, check it (decode_update) and fold it."""
    rng = np.random.default_rng(0)
    base = {"w": rng.standard_normal(size).astype(np.float32)}
    params = {"w": base["w"] + np.float32(0.01) * rng.standard_normal(size).astype(np.float32)}
    manifest = manifest_of(base)
    rows = []
    for text in ("none", *CODECS[1:]):
        c = parse_compression(text)

        def best(fn, repeats=3):
            times, value = [], None
            for _ in range(repeats):
                started = time.perf_counter()
                value = fn()
                times.append(time.perf_counter() - started)
            return value, round(1e3 * min(times), 1)

        payload, encode_ms = best(
            lambda c=c: encode_update(params, base, manifest, c, rng=rng, residual={}, velocity={})
        )
        lazy, decode_ms = best(lambda c=c, p=payload: decode_update(p, base, manifest, c))
        _, fold_ms = best(lambda lazy=lazy: WeightedMean(manifest).add(lazy, 1.0))
        rows.append(
            {
                "bench": "compression_codec_speed",
                "compression": c.text(),
                "params": size,
                "payload_bytes": len(payload),
                "encode_ms": encode_ms,
                "decode_update_ms": decode_ms,
                "fold_ms": fold_ms,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compression")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--workers", type=int, default=auto_workers())
    parser.add_argument("--codecs", nargs="+", default=list(CODECS), help="codecs to run; none is always run")
    parser.add_argument("--no-speed", action="store_true", help="skip the 10M-parameter codec timing")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not args.no_speed:
        for row in codec_speed():
            print(json.dumps(row), flush=True)
    runs = [
        digits_run(codec, clients=args.clients, rounds=args.rounds, workers=args.workers)
        for codec in dict.fromkeys(["none", *args.codecs])
    ]
    for row in compare(runs):
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
