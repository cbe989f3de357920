"""requirements/docker.lock pins and hashes everything the image installs, in step with pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==(\S+) \\$")


def _lock() -> dict[str, tuple[Version, int]]:
    """name -> (pinned version, number of hashes)."""
    pins: dict[str, tuple[Version, int]] = {}
    current = None
    for line in (ROOT / "requirements" / "docker.lock").read_text().splitlines():
        if match := PIN.match(line):
            current = canonicalize_name(match[1])
            pins[current] = (Version(match[2]), 0)
        elif line.strip().startswith("--hash=sha256:") and current is not None:
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
        elif line and not line.startswith((" ", "#")):
            raise AssertionError(f"unexpected line in docker.lock: {line!r}")
    return pins


def _image_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [*project["dependencies"], *project["optional-dependencies"]["server"]]
    names += project["optional-dependencies"]["examples"]
    return [Requirement(r) for r in names]


def test_every_pin_is_hashed():
    pins = _lock()
    assert len(pins) >= 40
    assert [name for name, (_, hashes) in pins.items() if hashes == 0] == []


def test_every_requirement_of_the_image_is_pinned_within_its_range():
    pins = _lock()
    for req in _image_requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} is not in docker.lock: run make lock"
        assert req.specifier.contains(pins[name][0], prereleases=True), (
            f"docker.lock pins {name} {pins[name][0]}: {req}"
        )


def test_the_image_gets_a_patched_h11_and_cpu_torch_only():
    pins = _lock()
    assert pins["h11"][0] >= Version("0.16.0")  # 0.15: CVE-2025-43859 (chunked-encoding smuggling)
    assert pins["torch"][0] == Version("2.13.0+cpu")
    assert not [name for name in pins if name.startswith("nvidia-")]


def test_the_image_is_built_from_a_digest_and_installs_only_hashed_files():
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    (base,) = [line for line in lines if line.startswith("FROM ")]
    assert re.fullmatch(r"FROM python:3\.11[\w.-]*-slim[\w.-]*@sha256:[0-9a-f]{64}", base), base
    text = "\n".join(lines).replace("\\\n", " ")
    installs = [line for line in text.splitlines() if "pip install" in line]
    assert any("--require-hashes" in i and "-r requirements/docker.lock" in i for i in installs), installs
    for install in installs:  # anything else installed comes from this source, with nothing downloaded
        assert "--require-hashes" in install or ("--no-deps" in install and "--no-index" in install), install
