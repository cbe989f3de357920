"""The simulator benchmarks at tiny sizes, so they never rot (timings are not asserted)."""

from __future__ import annotations

import json
import py_compile
from pathlib import Path

from bench import flower_compare, sim


def test_sim_bench_smoke(capsys):
    sim.main(["--smoke"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["bench"] for r in rows] == ["sim_trivial", "sim_digits", "sim_async_vs_sync"]
    assert rows[0]["peak_rss_mb_all_processes"] > 0 and len(rows[0]["s_per_round"]) == 2
    assert len(rows[1]["accuracy_curve"]) == 2
    both = rows[2]
    assert both["sync"]["client_updates"] == both["async"]["client_updates"] == 12  # the same client work
    assert both["async"]["versions"] == 6 and both["sync"]["versions"] == 2


def test_flower_workload_compiles_and_names_a_pinned_flower():
    # The Flower side needs its own venv (Ray, ~1 GB); `make bench` builds it. Here: it parses, it is pinned.
    py_compile.compile(str(Path(flower_compare.__file__).with_name("flower_workload.py")), doraise=True)
    assert "==" in flower_compare.FLOWER
