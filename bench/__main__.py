"""``python -m bench [NAME ...]``: the benchmarks at their default sizes, each in a fresh interpreter.

One process per benchmark keeps one benchmark's memory out of the next one's figures: run in one
process, the simulator's peak RSS (driver + workers) counted what ``bench.aggregation`` had left
resident in the driver, 474 MiB for 1000 clients instead of the 216 MiB it prints on its own. Each
benchmark prints JSON lines; the exit status is 1 if any of them failed.
"""

from __future__ import annotations

import subprocess
import sys

__all__ = ["BENCHMARKS", "main"]

BENCHMARKS = (
    "aggregation",
    "sim",
    "sim_ray",
    "sim_scale",
    "grpc_load",
    "grpc_scale",
    "async_compare",
    "flower_compare",
    "store_writes",
    "combiner_fuzz_rss",
    "dashboard_viewers",
    "evaluation_cost",
    "startup",
    "compression",
    "model_download",
)


def main(argv: list[str] | None = None) -> int:
    names = list(sys.argv[1:] if argv is None else argv) or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    failed = []
    for name in names:
        status = subprocess.run([sys.executable, "-m", f"bench.{name}"], check=False).returncode
        if status:
            failed.append(name)
            print(f"bench.{name} failed (exit status {status})", file=sys.stderr, flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
