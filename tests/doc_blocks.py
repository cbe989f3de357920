"""The code blocks of README.md and docs/*.md, and the scheme that says which of them claim to run.

- A block fenced ```python is executed (tests/integration/test_doc_blocks_run.py; compiled in unit tests).
- A block fenced ```sh, ```bash, ```console or ```shell claims to run, and runs: its commands are executed
  in document order against a real federation (tests/integration/test_doc_shell_blocks.py, which says
  how placeholders such as ``MODEL_ID`` are filled in and which sizes shrink), and each must exit 0. They
  are also checked by class, without running (see ``command_class``; tests/unit/test_doc_blocks.py): a
  command of no known class fails.
- Any other fence (none, ```text, ```json, ```yaml, ```toml, ```js) illustrates: output, a diagram, a
  config excerpt. It must not hide a command line: a line that reads as one (``fedn session start ...``,
  ``make demo``, ``python -m ...``) fails the test unless the block is fenced as a shell block.
- ``<!-- not run: why -->`` on the line before a shell or python block exempts it from running: commands
  for other tools (Docker, MinIO's ``mc``, ``make demo`` itself), a service for another host (its
  ``/etc`` files, its address), a python fragment that needs a model and data around it. The reason is
  required and names the test that covers the block's substance where one does; the ``fedn`` commands of
  such a block are still parsed, and a python fragment must still compile.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHELL = ("sh", "bash", "console", "shell")
_FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
_NOT_RUN = re.compile(r"<!--\s*not run:\s*(\S.*?)\s*-->")
_LOOKS_LIKE_COMMAND = re.compile(
    r"^\s*(?:\$\s+)?(?:[A-Z_]+=\S+\s+)*(?:\.venv/bin/)?(?:fedn|make|python3?|pip|docker|docker-compose)\s+[-\w.]+(?=\s|$)"
)
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_SEPARATORS = {"&&", "||", ";", "|"}
_REDIRECTS = {">", ">>", "<", "2>"}
# shell plumbing that prepares files or the environment around a fedn command; the shell-block test
# runs export, mkdir, umask and cd, and asks for a not-run mark for the rest (they read or expand input)
PLUMBING = {"umask", "mkdir", "echo", "export", "read", "unset", "printf", "cd", "cat"}


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    body: str
    not_run: str | None  # the reason given in a ``<!-- not run: ... -->`` comment before the fence

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def is_shell(self) -> bool:
        return self.lang in SHELL


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            raise AssertionError(f"{path}:{i + 1}: a code fence that is never closed")
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        reason = _NOT_RUN.search(before)
        body = "\n".join(line[len(m.group(1)) :] for line in lines[i + 1 : end])
        found.append(Block(path, i + 1, m.group(2), body, reason.group(1) if reason else None))
        i = end + 1
    return found


def all_blocks() -> list[Block]:
    return [b for path in doc_files() for b in blocks(path)]


def hidden_commands(block: Block) -> list[str]:
    """Lines of an illustrative block that read as commands (they would claim to run, unchecked)."""
    if block.is_shell or block.lang == "python":
        return []
    return [line for line in block.body.splitlines() if _LOOKS_LIKE_COMMAND.match(line)]


@dataclass(frozen=True)
class Command:
    """One simple command of a shell block: its ``VAR=value`` prefixes, its argv, and the file a ``>``
    sends its output to (``>>`` appends)."""

    env: dict[str, str]
    argv: list[str]
    stdout_to: str | None = None
    append: bool = False


def shell_commands(block: Block) -> list[Command]:
    """Each simple command of a shell block: continuations joined, comments taken out, split at
    ``&&``/``||``/``;``/``|``."""
    text = re.sub(r"\\\n", " ", block.body)
    out: list[Command] = []
    for line in text.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|<>")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        tokens = list(lexer)
        env: dict[str, str] = {}
        argv: list[str] = []
        stdout_to, append = None, False
        k = 0
        while k < len(tokens):
            tok = tokens[k]
            if tok in _SEPARATORS:
                out.append(Command(env, argv, stdout_to, append))
                env, argv, stdout_to, append = {}, [], None, False
            elif tok in _REDIRECTS:
                if tok in (">", ">>") and k + 1 < len(tokens):
                    stdout_to, append = tokens[k + 1], tok == ">>"
                k += 1  # and its target
            elif not argv and _ENV.match(tok):
                name, _, value = tok.partition("=")
                env[name] = value
            else:
                argv.append(tok)
            k += 1
        out.append(Command(env, argv, stdout_to, append))
    return [c for c in out if c.argv]


def commands(block: Block) -> list[list[str]]:
    """Each simple command of a shell block as argv: env prefixes and redirections taken out."""
    return [c.argv for c in shell_commands(block)]


def command_class(argv: list[str]) -> str:
    """``fedn``, ``make``, ``python-m``, ``python-c``, ``docker-compose``, ``plumbing`` or ``unknown``."""
    head = Path(argv[0]).name
    if head == "docker" and argv[1:2] == ["compose"]:
        return "docker-compose"
    if head == "fedn":
        return "fedn"
    if head == "make":
        return "make"
    if head in ("python", "python3") and len(argv) > 2 and argv[1] in ("-m", "-c"):
        return "python" + argv[1]
    if head in PLUMBING:
        return "plumbing"
    return "unknown"


def fedn_argv(argv: list[str]) -> list[str]:
    """The arguments after ``fedn``, without a trailing ``...`` that elides the rest of the flags."""
    args = argv[1:]
    return args[:-1] if args and args[-1] in ("...", "…") else args
