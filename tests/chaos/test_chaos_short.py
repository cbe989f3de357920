"""The short chaos schedule ``make test`` runs: every fault kind twice, and no invariant broken.

``make chaos`` runs a long schedule (``python -m tests.chaos.run --faults 100 --seed 1``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.chaos.harness import ChaosConfig, ChaosRun

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

# "reducer", "mongo" and "window" broke invariants before the fixes of issue 14 (bugs A, B, D): keep them here.
FAULTS_IN_MAKE_TEST = ["client", "combiner", "s3", "mongo", "reducer", "window", "stop"]
FAULTS = 2 * len(FAULTS_IN_MAKE_TEST)  # kinds are drawn as shuffled bags: each kind twice
SEED = 7


def test_short_chaos_schedule_keeps_every_invariant(tmp_path: Path):
    config = ChaosConfig(faults=FAULTS, seed=SEED, kinds=tuple(FAULTS_IN_MAKE_TEST), workdir=tmp_path / "chaos")

    report = ChaosRun(config).run().as_dict()

    summary = json.dumps(report, indent=1)
    assert report["faults_injected"] == FAULTS, summary
    assert report["sessions"] >= 1, summary
    ended = report["sessions_finished"] + report["sessions_failed_with_reason"] + report["sessions_stopped"]
    assert ended == report["sessions"], summary
    assert report["violations"] == [], summary
