"""fedn co-installs with flwr and TensorFlow: its protobuf range, and stubs that run on all of it.

The stubs' gencode must be no newer than the lowest protobuf fedn allows (protobuf's runtime refuses
newer gencode at import), and `make proto` must keep writing it with the same pinned generator.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirement(name: str) -> Requirement:
    reqs = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    return next(r for r in reqs if r.name == name)


def _floor(req: Requirement) -> Version:
    return max(Version(s.version) for s in req.specifier if s.operator in (">=", "=="))


def test_stub_gencode_runs_on_the_lowest_protobuf_allowed():
    pb2 = (ROOT / "fedn" / "v1" / "fedn_pb2.py").read_text()
    gencode = Version(re.search(r"# Protobuf Python Version: (\S+)", pb2).group(1))
    assert gencode <= _floor(_requirement("protobuf")), "regenerate with `make proto` (its pinned generator)"


def test_make_proto_pins_the_generator_that_wrote_the_stubs():
    grpc_stub = (ROOT / "fedn" / "v1" / "fedn_pb2_grpc.py").read_text()
    generated = re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", grpc_stub).group(1)
    pinned = re.search(r"^PROTO_TOOLS\s*:?=\s*grpcio-tools==(\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert generated == pinned
    assert Version(generated) <= _floor(_requirement("grpcio")), "the stubs would refuse the lowest grpcio allowed"


@pytest.mark.parametrize(
    ("who", "their_range"),
    [("flwr 1.42", ">=5.28.0,<7.0.0"), ("tensorflow 2.21", ">=6.31.1,<8.0.0")],  # from their METADATA
)
def test_protobuf_range_meets_theirs(who: str, their_range: str):
    ours = _requirement("protobuf").specifier
    theirs = Requirement(f"protobuf{their_range}").specifier
    candidates = [Version(v) for v in ("5.28.0", "5.29.6", "6.31.1", "6.33.6", "7.35.1", "7.36.2")]
    assert any(v in ours and v in theirs for v in candidates), f"fedn cannot co-install with {who}"
    if who.startswith("tensorflow"):  # every protobuf TensorFlow takes, fedn takes
        assert all(v in ours for v in candidates if v in theirs)


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
    except OSError:
        return False
    return True


@pytest.mark.timeout(180)
def test_resolver_installs_fedn_beside_flwr(tmp_path: Path):
    """pip resolves fedn's runtime requirements together with the newest flwr (a dry run: nothing installed)."""
    if not _pypi_reachable():
        pytest.skip("PyPI is not reachable: cannot ask the resolver about flwr")
    report = tmp_path / "report.json"
    argv = ["install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report), "flwr"]
    proc = subprocess.run(
        [sys.executable, "-m", "pip", *argv, *PYPROJECT["project"]["dependencies"]],
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    chosen = {
        i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]
    }
    assert "flwr" in chosen
    assert Version(chosen["protobuf"]) in _requirement("protobuf").specifier
