"""Benchmarks run at tiny sizes so they never rot (their timings are not asserted)."""

from __future__ import annotations

import json

from bench import aggregation


def test_aggregation_bench_smoke(capsys):
    aggregation.main(["--params", "1000", "--updates", "3", "--repeats", "1"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["bench"] for r in rows} == {"encode_payload", "encode_safetensors", "fold_updates", "merge_partials"}
