"""The docs' ```python blocks run, and the compose file the docs use validates (scheme: tests/doc_blocks.py).

Python blocks are executed as written, in a fresh module in a temporary directory, with one change to
keep ``make test`` short: a simulation spec built by a block is shrunk to 4 clients and 2 rounds (the
full sizes run in tests/e2e/test_convergence.py and ``make bench``), unless its client is the benchmarks'
synthetic one (``bench.workloads``, a trivial train step): that runs at its size in seconds, and a
block on it is usually about the size.
Shell blocks run in tests/integration/test_doc_shell_blocks.py, against a federation it starts.
"""

from __future__ import annotations

import shutil
import subprocess
import types

import pytest

import fedn.sim
from tests.doc_blocks import ROOT, Block, all_blocks, commands

PYTHON_BLOCKS = [b for b in all_blocks() if b.lang == "python" and b.not_run is None]


def _small_spec(real):
    def parse_spec(**kwargs):
        if str(kwargs.get("client", "")).startswith("bench.workloads:"):
            return real(**kwargs)
        kwargs.update(clients=min(kwargs.get("clients", 4), 4), rounds=min(kwargs.get("rounds", 2), 2))
        kwargs.update(workers=1)
        return real(**kwargs)

    return parse_spec


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda b: b.where)
def test_python_block_runs(block: Block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fedn.sim, "parse_spec", _small_spec(fedn.sim.parse_spec))
    module = types.ModuleType(f"doc_block_{block.line}")
    exec(compile(block.body, block.where, "exec"), module.__dict__)


def test_the_compose_file_the_docs_use_validates(tmp_path):
    uses_compose = [b for b in all_blocks() if b.is_shell and any(a[:2] == ["docker", "compose"] for a in commands(b))]
    assert uses_compose, "no doc uses docker compose any more: drop this test"
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("docker compose is not installed here; tests/unit/test_doc_blocks.py checks the services named")
    result = subprocess.run(
        [docker, "compose", "-f", str(ROOT / "docker-compose.yaml"), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
