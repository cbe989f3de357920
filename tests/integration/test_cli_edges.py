"""A port in use, as a real `fedn reducer start` / `fedn combiner start` meets it: one line, exit 2."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture
def taken_port():
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock.getsockname()[1]


def _fedn(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedn", *argv], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("tier", ["reducer", "combiner"])
def test_a_port_in_use_is_one_line_naming_the_port_and_the_flag(tier, taken_port, tmp_path):
    extra = (
        ["--state", f"sqlite:///{tmp_path / 's.db'}", "--models", (tmp_path / "m").as_uri()]
        if tier == "reducer"
        else ["--name", "edge-combiner", "--reducer", "http://127.0.0.1:9", "--models", (tmp_path / "m").as_uri()]
    )
    result = _fedn(tier, "start", "--host", "127.0.0.1", "--port", str(taken_port), "--insecure", *extra, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"port {taken_port} on 127.0.0.1 is already in use" in errors[0]
    assert "--port" in errors[0]
