"""Without the server extra, a tier's commands say in one line what to install (exit 2, no traceback)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest

import fedn.cli as cli


@dataclass
class _EntryPoint:
    name: str
    error: ImportError | None = None
    dist: object = None

    def load(self):
        if self.error is not None:
            raise self.error
        from client.cli import register

        return register


@pytest.fixture(autouse=True)
def _root_logger_restored():
    """main() points the root logger at this test's captured stderr, which is closed after it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def client_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands a client-only install finds: the client's loads, the servers' miss flask / pymongo."""
    eps = [
        _EntryPoint("client"),
        _EntryPoint("combiner", ModuleNotFoundError("No module named 'pymongo'", name="pymongo")),
        _EntryPoint("reducer", ModuleNotFoundError("No module named 'flask'", name="flask")),
    ]
    monkeypatch.setattr(cli, "entry_points", lambda group: eps if group == "fedn.commands" else [])
    # a tier's module is imported directly, not through the entry points; without its extra that import
    # fails and the entry points take over (test_a_tier_without_its_extra_falls_back_to_the_entry_points)
    monkeypatch.setattr(cli, "_TIER_COMMANDS", {})


@pytest.mark.parametrize(
    ("argv", "missing"),
    [
        (["reducer", "start"], "flask"),
        (["reducer", "start", "--state-file", "/run/secrets/state", "--port", "1"], "flask"),
        (["reducer", "start", "--help"], "flask"),
        (["combiner", "start"], "pymongo"),
    ],
)
def test_a_server_command_says_to_install_the_server_extra(client_only, capsys, argv: list[str], missing: str):
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "pip install 'fedn[server]'" in lines[0] and missing in lines[0] and argv[0] in lines[0]
    assert "Traceback" not in captured.err + captured.out


def test_the_client_command_works_and_nothing_is_logged_about_the_others(client_only, capsys, caplog):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["client", "start", "--help"])
    assert exit_.value.code == 0
    captured = capsys.readouterr()
    assert "--reducer" in captured.out and captured.err == ""
    assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")], caplog.text


def test_the_top_level_help_lists_the_missing_commands_with_the_hint(client_only, capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "reducer" in out and "fedn[server]" in out


def test_a_tier_without_its_extra_falls_back_to_the_entry_points(monkeypatch: pytest.MonkeyPatch):
    """The direct import of a tier's command module is a shortcut only: when it fails, the entry-point
    path runs and gives the one-line hint above."""
    import sys

    assert cli._tier_register("client") is not None
    assert cli._tier_register("session") is None  # not a tier: the full CLI
    monkeypatch.setitem(sys.modules, "reducer.cli", None)  # as if its imports failed (flask missing)
    assert cli._tier_register("reducer") is None


def test_version_is_read_only_when_asked(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("fedn ") and out != "fedn "
