"""The async-vs-sync benchmark at tiny size, so it never rots (timings are not asserted)."""

from __future__ import annotations

import json

import pytest

from bench import async_compare

pytestmark = pytest.mark.timeout(300)


def test_async_bench_smoke(capsys):
    async_compare.main(["--smoke"])
    row = json.loads(capsys.readouterr().out)
    assert row["bench"] == "async_vs_sync" and row["task_seconds"] == [0.05, 0.5]
    sync, async_ = row["sync"], row["async"]
    assert (sync["versions"], sync["client_updates"]) == (2, 4)
    assert (async_["versions"], async_["client_updates"]) == (4, 4)  # the same client work, one update per version
    for side in (sync, async_):
        assert len(side["accuracy_curve"]) == side["versions"]
        assert side["final_accuracy"] > row["seed_accuracy"], "training must move the model"
