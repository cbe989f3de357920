"""What durable writes cost: ``put_round`` one at a time, as the reducer writes them.

Rows: SQLite (a file on disk, WAL) with ``synchronous=NORMAL`` and ``FULL`` (the default), and a
MongoDB-wire server (SecantusDB, data on disk, started as the tests start it) with the driver's
default write concern (``w=1``, not journaled) and ours (``w=majority``, ``journal=true``). Each row
prints writes per second and the p50 / p99 latency of one write.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from fedn.records import ClientFailureRecord, MetricSummary, Round
from fedn.store import MongoStateStore, SQLiteStateStore, StateStore
from tests.store_servers import mongo_server  # the test-only server, started as the tests start it

__all__ = ["main", "time_writes"]


def _round(index: int) -> Round:
    """A round as the reducer writes it at its end: a few combiners, failures and metrics."""
    return Round(
        session_id="bench",
        index=index,
        model_in=f"model-{index - 1}",
        model_out=f"model-{index}",
        combiners=["combiner-0", "combiner-1"],
        num_selected=10,
        num_updates=9,
        failures=[ClientFailureRecord(client_id="client-7", combiner_id="combiner-1", error="deadline exceeded")],
        metrics={"train_loss": MetricSummary(mean=0.5, min=0.1, max=0.9, count=9)},
    )


def time_writes(store: StateStore, writes: int) -> dict:
    """``writes`` put_round calls, each timed on its own."""
    rounds = [_round(i + 1) for i in range(writes)]
    latencies = []
    start = time.perf_counter()
    for round_ in rounds:
        t0 = time.perf_counter()
        store.put_round(round_)
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - start
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "writes": writes,
        "writes_per_s": round(writes / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1e3, 3),
        "p99_ms": round(cuts[98] * 1e3, 3),
    }


def run(writes: int, workdir: Path) -> list[dict]:
    rows = []
    for level in ("NORMAL", "FULL"):
        store = SQLiteStateStore(str(workdir / f"state-{level.lower()}.db"), synchronous=level)
        rows.append({"bench": "store_writes", "backend": "sqlite", "setting": f"synchronous={level}"})
        rows[-1].update(time_writes(store, writes))
        store.close()
    with mongo_server(workdir / "mongo") as url:
        for setting, options in (("w=1,j=false (driver default)", "&w=1&journal=false"), ("w=majority,j=true", "")):
            store = MongoStateStore(url.replace("/fedn?", f"/bench{len(rows)}?") + options)
            rows.append({"bench": "store_writes", "backend": "mongodb (SecantusDB)", "setting": setting})
            rows[-1].update(time_writes(store, writes))
            store.close()
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--writes", type=int, default=2000)
    parser.add_argument("--dir", type=Path, default=None, help="where the files go (default: a temporary directory)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as workdir:
        for row in run(args.writes, Path(workdir)):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
