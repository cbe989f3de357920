"""`fedn local`, the command `make demo` runs, end to end as a user runs it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]


def _demo_argv() -> list[str]:
    """The `fedn local ...` line of the Makefile's demo target, so this test runs what users run."""
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    line = next(part for part in text.split("\n") if "fedn local" in part)
    return line.split("fedn local", 1)[1].split()


def test_the_demo_trains_prints_rounds_and_stops_everything():
    argv = _demo_argv()
    assert "--min-accuracy" in argv
    result = subprocess.run(
        [sys.executable, "-m", "fedn", "local", *argv], capture_output=True, text=True, timeout=280, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rounds = re.findall(
        r"^round\s+(\d+)/(\d+) \| combiners 2 \| clients 4/4 .*accuracy (\d\.\d+)", result.stdout, re.MULTILINE
    )
    assert len(rounds) == int(rounds[0][1]) >= 5
    final = float(re.search(r"final accuracy (\d\.\d+)", result.stdout).group(1))
    assert final >= 0.90
    assert "stopped 7 processes" in result.stdout and "non-zero" not in result.stdout
