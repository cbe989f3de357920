"""Hot paths of a round: encoding a model payload, folding updates, merging partials.

Prints one JSON line per measurement. ``--params`` sets the model size.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from fedn.aggregation import WeightedMean, merge_partials
from fedn.codec import decode_payload, encode_model, encode_payload, manifest_of


def _best_of(repeats: int, fn) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def run(params: int, updates: int, repeats: int) -> list[dict]:
    rng = np.random.default_rng(0)
    model = {
        "layer0.weight": rng.standard_normal(params - params // 10, dtype=np.float32),
        "layer0.bias": rng.standard_normal(params // 10, dtype=np.float32),
    }
    manifest, payload = encode_payload(model)
    results = []

    t = _best_of(repeats, lambda: encode_payload(model))
    results.append({"bench": "encode_payload", "params": params, "seconds": t, "mb_per_s": len(payload) / t / 1e6})
    t = _best_of(repeats, lambda: encode_model(model))
    results.append({"bench": "encode_safetensors", "params": params, "seconds": t})

    def fold():
        acc = WeightedMean(manifest)
        for i in range(updates):
            acc.add(decode_payload(manifest, payload), float(i + 1))
        return acc.partial()

    t = _best_of(repeats, fold)
    results.append(
        {
            "bench": "fold_updates",
            "params": params,
            "updates": updates,
            "seconds": t,
            "seconds_per_update": t / updates,
            "mb_per_s": updates * len(payload) / t / 1e6,
        }
    )

    partial = fold()
    t = _best_of(repeats, lambda: merge_partials([partial] * 4))
    results.append({"bench": "merge_partials", "params": params, "partials": 4, "seconds": t})
    assert manifest_of(partial.arrays)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=int, default=10_000_000)
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    for row in run(args.params, args.updates, args.repeats):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
