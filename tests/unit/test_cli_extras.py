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
