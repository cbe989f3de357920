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
from importlib.metadata import entry_points

from fedn.errors import FailedPrecondition, FednError

__all__ = ["build_parser", "main"]

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    from fedn.cli import audit, bench, certs, local, models, partition, sessions, simulate, tokens

    parser = argparse.ArgumentParser(
        prog="fedn",
        description="Three-tier federated learning: a reducer, combiners and clients.",
        epilog="Run `fedn COMMAND --help` for the options of each command.",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("FEDN_LOG_LEVEL", "INFO"),
        help="DEBUG, INFO, WARNING or ERROR [env FEDN_LOG_LEVEL; default INFO]",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (sessions, models, local, simulate, partition, bench, certs, tokens, audit):
        module.register(commands)
    for ep in sorted(entry_points(group="fedn.commands"), key=lambda e: e.name):
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from fedn.logs import configure_logging

    configure_logging(args.log_level, service=getattr(args, "service_name", None))
    try:
        return int(args.func(args) or 0)
    except FednError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
