"""The combiner fuzz/RSS benchmark at a tiny size, so it never rots (memory and timings not asserted)."""

from __future__ import annotations

import json

from bench import combiner_fuzz_rss


def test_combiner_fuzz_rss_bench_smoke(capsys):
    combiner_fuzz_rss.main(["--calls", "300", "--threads", "3", "--settle-s", "0.5"])
    (line,) = capsys.readouterr().out.splitlines()
    row = json.loads(line)
    for field in ("calls", "codes", "rss_mb_idle", "rss_mb_peak", "rss_mb_after", "growth_mb"):
        assert field in row
    assert row["calls"] == 300 == sum(row["codes"].values())
    assert not {"INTERNAL", "UNKNOWN"} & set(row["codes"]), row["codes"]
    assert row["combiner_alive"]
