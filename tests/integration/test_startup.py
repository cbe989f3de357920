"""What keeps `fedn local` quick to start (bench.startup measures it): each process imports only what its
own command needs, and the launcher starts the combiners beside the reducer instead of after it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fedn.launcher import FederationSpec, LocalFederation

# Modules a process must not import unless it is the one that uses them (each costs 0.1-2 s of start).
_HEAVY = ("torch", "fedn.sim", "flask", "pymongo", "minio", "reducer.app", "combiner.router", "client.runtime")


def _imported(code: str) -> set[str]:
    """The modules of ``_HEAVY`` a fresh interpreter holds after running ``code``."""
    probe = f"import json, sys\n{code}\nprint(json.dumps(sorted(m for m in {_HEAVY!r} if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    return set(json.loads(out.stdout.splitlines()[-1]))


@pytest.mark.parametrize(
    ("argv", "allowed"),
    [
        (["--log-level", "INFO", "client", "start"], set()),
        (["combiner", "start"], set()),
        (["reducer", "start"], set()),
        (["session", "list"], set()),
    ],
)
def test_parsing_a_command_line_imports_no_other_tier(argv: list[str], allowed: set[str]) -> None:
    code = f"from fedn.cli import _command_name, build_parser\nbuild_parser(_command_name({argv!r}))"
    assert _imported(code) <= allowed


@pytest.mark.parametrize(
    ("module", "allowed"),
    [
        ("reducer.server", {"flask", "reducer.app"}),
        ("combiner.server", {"combiner.router"}),
        ("client.runtime", {"client.runtime"}),
        ("fedn.launcher", set()),
    ],
)
def test_a_process_imports_only_its_own_tier(module: str, allowed: set[str]) -> None:
    assert _imported(f"import {module}") <= allowed


def test_the_launcher_starts_the_combiners_before_the_reducer_answers(tmp_path, monkeypatch) -> None:
    fed = LocalFederation(FederationSpec(client="m:C", num_combiners=2, secure=False, workdir=tmp_path))
    calls: list[str] = []
    monkeypatch.setattr(fed, "_spawn_reducer", lambda: calls.append("spawn reducer"))
    monkeypatch.setattr(fed, "start_combiner", lambda i: calls.append(f"spawn combiner-{i}"))
    monkeypatch.setattr(fed, "_wait_for_reducer", lambda timeout_s: calls.append("reducer answers"))
    monkeypatch.setattr(fed, "wait_for_combiners", lambda n, timeout_s: calls.append(f"{n} combiners registered"))

    fed.start()

    assert calls == [
        "spawn reducer",
        "spawn combiner-0",
        "spawn combiner-1",
        "reducer answers",
        "2 combiners registered",
    ]
