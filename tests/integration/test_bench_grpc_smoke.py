"""The real-gRPC load benchmark at a tiny size, so it never rots (its timings are not asserted)."""

from __future__ import annotations

from bench import grpc_load


def test_grpc_load_bench_smoke():
    rows = grpc_load.run(params=1000, client_counts=[3], rounds=2)
    assert len(rows) == 1 and rows[0]["clients"] == 3
    assert rows[0]["combiner_rss_mb_peak"] >= rows[0]["combiner_rss_mb_idle"] > 0
