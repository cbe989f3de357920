"""The ``fedn`` command line.

fedn's own commands (sessions, models, a local federation) live here; each tier
adds its ``start`` command through the ``fedn.commands`` entry-point group, so
this package never imports a tier.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import NoReturn

from fedn.errors import FailedPrecondition, FednError, Unavailable

__all__ = ["LOG_LEVELS", "build_parser", "main"]

logger = logging.getLogger(__name__)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class _UsageError(SystemExit):
    """A bad command line, already reported; :func:`main` returns 2 for it instead of exiting."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line with what to do (sub-commands inherit the class)."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise _UsageError(2)


# The tiers' commands, as pyproject.toml registers them under the entry-point group ``fedn.commands``. A
# tier's process imports its module directly: reading the installed packages' metadata for the group
# costs each process of `fedn local` tens of milliseconds of its start. Everything else (plug-in commands,
# the full CLI, a tier whose extra is missing) goes through the entry points.
_TIER_COMMANDS = {"reducer": "reducer.cli", "combiner": "combiner.cli", "client": "client.cli"}


def entry_points(group: str) -> list:
    """importlib.metadata's entry points of ``group``, the module imported only when they are needed."""
    from importlib.metadata import entry_points as found

    return list(found(group=group))


class _VersionAction(argparse.Action):
    """``--version``, looked up in the package metadata only when asked for."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None) -> NoReturn:
        from fedn import __version__

        print(f"fedn {__version__}")
        parser.exit()


def _tier_register(command: str | None):
    """The ``register`` function of a tier's command, imported directly; None to use the entry points."""
    if command not in _TIER_COMMANDS:
        return None
    import importlib

    try:
        return importlib.import_module(_TIER_COMMANDS[command]).register
    except ImportError:  # its extra is missing: the entry-point path says what to install
        return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with ``command`` the name of a tier's command (``reducer``, ``combiner``,
    ``client``), only that one: a tier's process then imports none of the other commands' modules (a
    third of a second of each process's start in ``fedn local``)."""
    tier = _tier_register(command)
    if tier is None:
        eps = sorted(entry_points(group="fedn.commands"), key=lambda e: e.name)
        only_tier = command is not None and any(ep.name == command for ep in eps)
    else:
        eps, only_tier = [], True
    parser = _Parser(
        prog="fedn",
        description="Three-tier federated learning: a reducer, combiners and clients.",
        epilog="Run `fedn COMMAND --help` for the options of each command. Commands that talk to a reducer "
        "read its URL from FEDN_REDUCER and your token from FEDN_TOKEN or FEDN_TOKEN_FILE.",
    )
    parser.add_argument("--version", action=_VersionAction, help="show the version and exit")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("FEDN_LOG_LEVEL", "INFO"),
        help="DEBUG, INFO, WARNING or ERROR [env FEDN_LOG_LEVEL; default INFO]",
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=os.environ.get("FEDN_LOG_FORMAT", "text"),
        help="text lines, or one JSON object per line for log shippers [env FEDN_LOG_FORMAT; default text]",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    if tier is not None:
        tier(commands)
    elif only_tier:
        eps = [ep for ep in eps if ep.name == command]
    else:
        from fedn.cli import audit, bench, certs, local, models, partition, sessions, simulate, tokens

        for module in (sessions, models, local, simulate, partition, bench, certs, tokens, audit):
            module.register(commands)
    for ep in eps:
        try:
            register = ep.load()
        except ImportError as exc:  # a tier without its extra, or a broken plug-in: not the whole CLI down
            _register_unavailable(commands, ep.name, exc, getattr(getattr(ep, "dist", None), "name", None))
            continue
        register(commands)
    return parser


def _register_unavailable(commands: argparse._SubParsersAction, name: str, exc: ImportError, dist: str | None) -> None:
    """``fedn NAME ...`` (any arguments, ``--help`` too) fails with one line saying what to install."""
    missing = exc.name or str(exc)
    install = "pip install 'fedn[server]'" if dist in (None, "fedn") else f"reinstall {dist} with its dependencies"
    message = f"`fedn {name}` is not installed here (missing module {missing!r}): {install}"
    logger.debug("fedn: commands of %r are unavailable: %s", name, exc)
    sub = commands.add_parser(name, help=f"unavailable: {install}", add_help=False)
    sub.add_argument("ignored", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    def unavailable(args: argparse.Namespace) -> int:
        raise FailedPrecondition(message)

    sub.set_defaults(func=unavailable)


def _command_name(argv: list[str]) -> str | None:
    """The sub-command's name: the first argument that is not a global option or its value."""
    args = iter(argv)
    for arg in args:
        if arg in ("--log-level", "--log-format"):
            next(args, None)
        elif not arg.startswith("-"):
            return arg
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(_command_name(sys.argv[1:] if argv is None else argv))
    try:
        args = parser.parse_args(argv)
    except _UsageError:
        return 2
    from fedn.logs import configure_logging

    if str(args.log_level).upper() not in LOG_LEVELS:
        print(
            f"error: --log-level {args.log_level} is not a level: use one of {', '.join(LOG_LEVELS)}", file=sys.stderr
        )
        return 2
    os.environ["FEDN_LOG_FORMAT"] = args.log_format  # kept by a tier's own set-up and by `fedn local`'s processes
    configure_logging(args.log_level, service=getattr(args, "service_name", None), log_format=args.log_format)
    try:
        return int(args.func(args) or 0)
    except FednError as exc:
        hint = ""
        if isinstance(exc, Unavailable) and "unreachable" in exc.message and getattr(args, "reducer", None):
            hint = " (is it running? name it with --reducer or FEDN_REDUCER)"
        print(f"error: {exc.message}{hint}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # a command's imports are lazy: a missing extra shows up here
        logger.debug("fedn %s: missing module", args.command, exc_info=True)
        server = args.command in ("reducer", "combiner")
        install = "pip install 'fedn[server]'" if server else f"install the package that provides {exc.name!r}"
        print(f"error: `fedn {args.command}` needs module {exc.name!r}, not installed here: {install}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _quiet_broken_pipe()


def _quiet_broken_pipe() -> int:
    """The reader went away (``fedn model list | head -1``): exit quietly, as Unix tools do.

    stdout is pointed at /dev/null so the interpreter's final flush does not raise again.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout replaced by something without a file descriptor
        pass
    finally:
        os.close(devnull)
    return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by the closed pipe
