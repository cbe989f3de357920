"""Every code block in README.md and docs/*.md that claims to run is checked (scheme: tests/doc_blocks.py).

What each class of command gets here, with no sockets and no processes:
- ``fedn ...``: parsed by the real CLI parser (``fedn.cli.build_parser``), so the command, every flag,
  its type and its choices must exist; ``fedn partition`` is also run (it needs no federation). The
  ``fedn`` commands of a block marked not run are parsed too: not running a block is no licence for a
  flag that does not exist. tests/integration/test_doc_shell_blocks.py runs them all against a federation.
- ``make X``: the Makefile has the target. ``python -m M``: the module exists. ``python -c CODE``: compiles.
- ``docker compose ...``: docker-compose.yaml has the services named (``docker compose config -q`` runs
  in tests/integration/test_doc_blocks_run.py when docker is installed).
- shell plumbing (``umask``, ``mkdir``, ``echo``, ``export``, ...): parsed into commands; run in
  tests/integration/test_doc_shell_blocks.py.
- ``python`` blocks compile here and run in tests/integration/test_doc_blocks_run.py.
"""

from __future__ import annotations

import importlib.util
import re
from functools import cache

import pytest
import yaml

from fedn.cli import build_parser, main
from tests.doc_blocks import (
    ROOT,
    Block,
    Command,
    all_blocks,
    command_class,
    commands,
    fedn_argv,
    hidden_commands,
    shell_commands,
)

BLOCKS = all_blocks()
SHELL_BLOCKS = [b for b in BLOCKS if b.is_shell and b.not_run is None]
COMMANDS = [(b, argv) for b in SHELL_BLOCKS for argv in commands(b)]
NOT_RUN_FEDN = [
    (b, argv)
    for b in BLOCKS
    if b.is_shell and b.not_run is not None
    for argv in commands(b)
    if command_class(argv) in ("fedn", "docker-compose")
]


def _id(item) -> str:
    block, argv = item if isinstance(item, tuple) else (item, None)
    return block.where + (f" {' '.join(argv[:3])}" if argv else "")


@cache
def _parser():
    return build_parser()  # loads every tier's entry point: once per run, not once per command


def _make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*):", text, re.MULTILINE))


def _compose_services() -> set[str]:
    return set(yaml.safe_load((ROOT / "docker-compose.yaml").read_text())["services"])


def test_the_scheme_finds_the_blocks():
    # the README's demo, its client and the docs' shell blocks: if this drops, the parser broke
    assert len(BLOCKS) > 50
    assert any(b.lang == "python" and "class MyClient" in b.body for b in BLOCKS)
    assert len(COMMANDS) > 40


@pytest.mark.parametrize("block", BLOCKS, ids=_id)
def test_every_block_is_run_checked_or_illustrative(block: Block):
    assert not hidden_commands(block), (
        f"{block.where}: an illustrative ```{block.lang} block holds command lines; "
        "fence it as ```sh so a test checks it, or as ```text if it is output"
    )
    if block.not_run is not None:
        assert block.is_shell or block.lang == "python", f"{block.where}: only shell and python blocks run"
        assert len(block.not_run) > 10, f"{block.where}: say why it is not run"


@pytest.mark.parametrize("item", COMMANDS, ids=_id)
def test_every_command_is_covered(item):
    block, argv = item
    kind = command_class(argv)
    assert kind != "unknown", (
        f"{block.where}: `{' '.join(argv)}` is not checked by any test; "
        "teach tests/doc_blocks.py its class or put <!-- not run: why --> before the block"
    )
    if kind == "fedn":
        _check_fedn(block, argv)
    elif kind == "make":
        assert set(argv[1:]) <= _make_targets(), f"{block.where}: no make target {argv[1:]}"
    elif kind == "python-m":
        assert importlib.util.find_spec(argv[2]) is not None, f"{block.where}: no module {argv[2]}"
    elif kind == "python-c":
        compile(argv[2], block.where, "exec")
    elif kind == "docker-compose":
        _check_compose(block, argv)


@pytest.mark.parametrize("item", NOT_RUN_FEDN, ids=_id)
def test_fedn_commands_of_blocks_not_run_parse(item):
    block, argv = item
    if command_class(argv) == "fedn":
        _check_fedn(block, argv)
    else:
        _check_compose(block, argv)


def _check_fedn(block: Block, argv: list[str]) -> None:
    args = fedn_argv(argv)
    try:
        _parser().parse_args(args)
    except (SystemExit, Exception) as exc:  # argparse exits; fedn's parser raises its usage error
        pytest.fail(f"{block.where}: `fedn {' '.join(args)}` is refused by the CLI parser ({exc!r})")


def _check_compose(block: Block, argv: list[str]) -> None:
    # docker compose up -d --build | docker compose exec SERVICE CMD ...
    verb = argv[2]
    assert verb in {"up", "down", "exec", "logs", "ps", "config", "run", "restart", "stop"}
    if verb in ("exec", "run"):
        service, inner = argv[3], argv[4:]
        assert service in _compose_services(), f"{block.where}: docker-compose.yaml has no service {service}"
        if inner and inner[0] == "fedn":
            _check_fedn(block, inner)


def test_python_blocks_compile():
    for block in (b for b in BLOCKS if b.lang == "python"):
        compile(block.body, block.where, "exec")


def test_fedn_partition_in_the_docs_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    runs = [argv for _, argv in COMMANDS if command_class(argv) == "fedn" and fedn_argv(argv)[:1] == ["partition"]]
    for argv in runs:
        assert main(fedn_argv(argv)) == 0, f"`{' '.join(argv)}` failed: {capsys.readouterr().err}"
    assert runs, "no `fedn partition` command in the docs any more: drop this test"
    assert all((tmp_path / a[a.index("--plot") + 1]).exists() for a in runs if "--plot" in a)


def test_a_command_the_scheme_does_not_know_fails():
    block = Block(ROOT / "x.md", 1, "sh", "mc admin user add local b secret\nfedn session start --bogus", None)
    argv = commands(block)
    assert [command_class(a) for a in argv] == ["unknown", "fedn"]
    with pytest.raises(pytest.fail.Exception):
        _check_fedn(block, argv[1])


def test_an_output_block_that_hides_a_command_is_caught():
    hidden = Block(ROOT / "x.md", 1, "", "$ fedn session start --rounds 2\nround 1/2 | accuracy 0.5", None)
    output = Block(ROOT / "x.md", 1, "", "fedn simulate: 4 clients in 1 combiner groups, 2 rounds", None)
    assert hidden_commands(hidden) == ["$ fedn session start --rounds 2"]
    assert hidden_commands(output) == []


def test_shell_commands_keep_env_prefixes_and_output_files():
    body = (
        "FEDN_CLIENT_TOKEN_FILE=t.token fedn client start \\\n  --ca-file ca.pem   # a comment\n"
        "python3 -c 'print(1)' > out.txt && echo more >> out.txt; umask 077"
    )
    found = shell_commands(Block(ROOT / "x.md", 1, "sh", body, None))
    assert found == [
        Command({"FEDN_CLIENT_TOKEN_FILE": "t.token"}, ["fedn", "client", "start", "--ca-file", "ca.pem"]),
        Command({}, ["python3", "-c", "print(1)"], "out.txt", False),
        Command({}, ["echo", "more"], "out.txt", True),
        Command({}, ["umask", "077"]),
    ]
