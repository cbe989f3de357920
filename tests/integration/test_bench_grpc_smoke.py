"""The real-gRPC load benchmark and `fedn bench load` at a tiny size, so they never rot (timings not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench import grpc_load


def test_grpc_load_bench_smoke(capsys):
    grpc_load.main(["--params", "1000", "--clients", "3", "4", "--big-params", "2000", "--big-clients", "2",
                    "--rounds", "2", "--repeats", "2"])  # fmt: skip
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    load = [r for r in lines if r["bench"] == "grpc_load"]
    # interleaved: TLS then plaintext, then plaintext then TLS
    assert [(r["repeat"], r["tls"], r["clients"]) for r in load] == [
        (0, True, 3), (0, True, 4), (0, True, 2),
        (0, False, 3), (0, False, 4), (0, False, 2),
        (1, False, 3), (1, False, 4), (1, False, 2),
        (1, True, 3), (1, True, 4), (1, True, 2),
    ]  # fmt: skip
    for rows in (load[0:3], load[3:6], load[6:9], load[9:12]):
        assert all(len(r["s_per_round"]) == 2 for r in rows)
        assert "combiner_rss_growth_vs_3_clients" in rows[1]
        assert rows[2]["params"] == 2000 and "combiner_rss_peak_over_idle_in_models" in rows[2]
        assert all(len(r["combiner_rss_mb_idle"]) == 2 and min(r["combiner_rss_mb_idle"]) > 0 for r in rows)
    ratios = [r for r in lines if r["bench"] == "grpc_load_tls_vs_plain"]
    assert [(r["clients"], r["repeats"]) for r in ratios] == [(3, 2), (4, 2), (2, 2)]
    for r in ratios:
        assert r["s_per_round"] == pytest.approx(r["s_per_round_tls"] / r["s_per_round_plain"], rel=0.02)
        assert len(r["s_per_round_by_repeat"]) == 2 and r["combiner_rss_peak"] > 0


def test_fedn_bench_load_command():
    proc = subprocess.run(
        [sys.executable, "-m", "fedn", "bench", "load", "--clients", "5", "--combiners", "2", "--params", "500",
         "--rounds", "1"],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (row["clients"], row["combiners"], row["rounds"]) == (5, 2, 1)
