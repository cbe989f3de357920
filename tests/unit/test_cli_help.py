"""Every `fedn` command has a --help that explains it, and the tiers plug their commands in."""

from __future__ import annotations

import argparse

import pytest

from fedn.cli import build_parser, main


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                assert helps.get(name), f"`fedn {' '.join((*path, name))}` has no one-line help"
                yield from _walk(sub, (*path, name))


def test_all_commands_are_present_and_documented():
    commands = {" ".join(path) for path, _ in _walk(build_parser())}
    for expected in (
        "reducer start",
        "combiner start",
        "client start",
        "session start",
        "model list",
        "model download",
        "model upload",
        "local",
    ):
        assert expected in commands
    for path, parser in _walk(build_parser()):
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"`fedn {' '.join(path)} {action.option_strings[0]}` has no help text"


@pytest.mark.parametrize("argv", [["--help"], ["reducer", "start", "--help"], ["local", "--help"]])
def test_help_exits_zero(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    assert "usage: fedn" in capsys.readouterr().out
