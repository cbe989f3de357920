"""Benchmarks run at tiny sizes so they never rot (their timings are not asserted)."""

from __future__ import annotations

import json

from bench import aggregation, model_download


def test_aggregation_bench_smoke(capsys):
    aggregation.main(["--params", "1000", "--updates", "3", "--repeats", "1"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["bench"] for r in rows} == {"encode_payload", "encode_safetensors", "fold_updates", "merge_partials"}


def test_model_download_bench_smoke(capsys):
    model_download.main(["--params", "5000", "--chunk-bytes", "4096", "--repeats", "2"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["bench"], r.get("model") or r["side"]) for r in rows] == [
        ("model_download", "held"),
        ("model_download", "streamed"),
        ("chunk_framing", "download"),
        ("chunk_framing", "download"),
        ("chunk_framing", "upload"),
        ("chunk_framing", "upload"),
    ]
    assert all(r["cpu_ms_best"] >= 0 for r in rows)


def test_bench_runs_each_benchmark_in_its_own_interpreter_and_reports_failures(monkeypatch, capsys):
    import subprocess
    import sys

    import bench.__main__ as runner

    commands = []

    def run(cmd, check):
        commands.append(cmd)
        return subprocess.CompletedProcess(cmd, 3 if cmd[-1] == "bench.sim" else 0)

    monkeypatch.setattr(runner.subprocess, "run", run)
    assert runner.main([]) == 1
    # every benchmark ran, the ones after the failure too, each in a fresh interpreter
    assert commands == [[sys.executable, "-m", f"bench.{name}"] for name in runner.BENCHMARKS]
    assert "bench.sim failed (exit status 3)" in capsys.readouterr().err

    commands.clear()
    assert runner.main(["grpc_load", "aggregation"]) == 0
    assert [c[-1] for c in commands] == ["bench.grpc_load", "bench.aggregation"]

    commands.clear()
    assert runner.main(["grpc_load", "nope"]) == 2
    assert commands == [] and "unknown benchmark nope" in capsys.readouterr().err
