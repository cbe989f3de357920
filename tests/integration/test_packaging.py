"""The wheel: what a client gets from ``pip install fedn``, and what it must not get.

A client-only install (no extras) has grpcio, numpy, pydantic, httpx, ... but not flask,
pymongo or minio; the wheel holds no top-level ``examples`` package and registers no plug-in. The
fresh venv gets its dependencies from this venv's site-packages (linked, not downloaded): no network.
Slow but bounded: building the wheel and the venv takes ~20 s here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from importlib.metadata import distribution
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.plugin_dist import write_plugin_dist

ROOT = Path(__file__).resolve().parents[2]
SERVER_ONLY = {"flask", "pymongo", "minio", "pyjwt"}
CLIENT_NEEDS = {"grpcio", "protobuf", "numpy", "safetensors", "pydantic", "pydantic-settings", "httpx", "rich"}

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the working tree, so no build/ or egg-info lands in it."""
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("fedn", "reducer", "combiner", "client", "examples"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(src)],
        check=True,
        timeout=90,
        capture_output=True,
    )
    (built,) = out.glob("fedn-*.whl")
    return built


def _metadata(wheel: Path, name: str) -> str:
    with zipfile.ZipFile(wheel) as zf:
        (path,) = [n for n in zf.namelist() if n.endswith(f".dist-info/{name}")]
        return zf.read(path).decode()


def _requirements(wheel: Path) -> list[Requirement]:
    return [Requirement(r) for r in Parser().parsestr(_metadata(wheel, "METADATA")).get_all("Requires-Dist") or []]


def test_the_wheel_holds_the_four_packages_and_no_examples(wheel: Path):
    with zipfile.ZipFile(wheel) as zf:
        tops = {n.split("/", 1)[0] for n in zf.namelist() if not n.split("/", 1)[0].endswith(".dist-info")}
    assert tops == {"fedn", "reducer", "combiner", "client"}


def test_the_wheel_registers_the_tiers_and_no_plug_in(wheel: Path):
    entry_points = _metadata(wheel, "entry_points.txt")
    assert "[fedn.commands]" in entry_points and "fedn.aggregators" not in entry_points
    assert "examples" not in entry_points


def test_a_plain_install_carries_no_server_dependency_and_the_extra_does(wheel: Path):
    requirements = _requirements(wheel)
    plain = {r.name.lower() for r in requirements if r.marker is None}
    server = {r.name.lower(): r for r in requirements if r.marker and r.marker.evaluate({"extra": "server"})}
    assert plain >= CLIENT_NEEDS and not plain & SERVER_ONLY
    assert set(server) >= SERVER_ONLY
    assert "h11" in server and not server["h11"].specifier.contains("0.15.0"), "h11 < 0.16 has CVE-2025-43859"


def _closure(requirements: list[Requirement]) -> set[str]:
    """Distribution names ``requirements`` (no extras) pull in, as this venv has them installed."""
    seen: set[str] = set()
    todo = [r for r in requirements if r.marker is None or r.marker.evaluate({"extra": ""})]
    while todo:
        req = todo.pop()
        if req.name.lower() in seen or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
            continue
        seen.add(req.name.lower())
        todo += [Requirement(r) for r in distribution(req.name).requires or []]
    return seen


def _link_dependencies(names: set[str], site: Path) -> None:
    """Symlink each distribution's top-level files (and its dist-info) from this venv into ``site``."""
    for name in names:
        dist = distribution(name)
        base = Path(dist.locate_file(""))
        for top in {Path(str(f)).parts[0] for f in dist.files or []}:
            if top not in ("..", "__pycache__") and not (site / top).exists() and (base / top).exists():
                (site / top).symlink_to(base / top)


def test_a_client_only_install_runs_a_client_without_flask(wheel: Path, tmp_path: Path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    )
    _link_dependencies(_closure(_requirements(wheel)), site)
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index"]
    subprocess.run([*pip, str(wheel)], check=True, timeout=60, capture_output=True)
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)

    absent = run(
        str(python),
        "-c",
        "import importlib.util as u; print([m for m in ('flask', 'pymongo', 'minio', 'examples') if u.find_spec(m)])",
    )
    assert absent.stdout.strip() == "[]", absent.stdout + absent.stderr
    runtime = run(str(python), "-c", "import client.runtime, client, fedn.api_client")
    assert runtime.returncode == 0, runtime.stderr
    help_ = run(str(venv / "bin" / "fedn"), "client", "start", "--help")
    assert help_.returncode == 0 and "--reducer" in help_.stdout, help_.stderr
    assert help_.stderr == "", help_.stderr
    for tier, missing in (("reducer", "flask"), ("combiner", "")):
        refused = run(str(venv / "bin" / "fedn"), tier, "start")
        assert refused.returncode == 2, refused.stderr
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and "pip install 'fedn[server]'" in lines[0] and missing in lines[0], refused.stderr
        assert "Traceback" not in refused.stderr


@pytest.mark.parametrize("registered", [False, True])
def test_processes_find_the_example_plug_in_only_through_a_registering_package(tmp_path: Path, registered: bool):
    """What tests/e2e/test_strategies.py relies on: its reducer and combiners are such processes."""
    path = [str(write_plugin_dist(tmp_path))] if registered else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*path, str(ROOT)])}
    probe = "from fedn.aggregation import get_aggregator as g; print(g('clipped_mean').__name__)"
    found = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    if registered:
        assert found.returncode == 0 and found.stdout.strip() == "ClippedMean", found.stderr
    else:
        assert found.returncode != 0 and "unknown aggregator" in found.stderr
