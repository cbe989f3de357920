"""What a tier's process imports at start: every process of `fedn local` pays for it (bench.startup)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("tier", ["client", "combiner", "reducer"])
def test_a_tier_imports_neither_httpx_cli_nor_the_other_commands(tier: str):
    probe = f"""
import sys
from fedn.cli import build_parser
build_parser({tier!r})
import fedn.api_client  # every tier's REST client (the combiner's and the reducer's are imported at start)
import httpx
mods = sys.modules
print(mods.get("httpx._main", "absent") is None, "rich.syntax" in mods, "fedn.cli.simulate" in mods)
assert callable(httpx.Client) and callable(httpx.main)
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["True", "False", "False"], out.stdout + out.stderr
