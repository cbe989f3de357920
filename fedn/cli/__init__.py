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

from fedn.errors import FednError

__all__ = ["build_parser", "main"]

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    from fedn.cli import bench, local, models, partition, sessions, simulate

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
    for module in (sessions, models, local, simulate, partition, bench):
        module.register(commands)
    for ep in sorted(entry_points(group="fedn.commands"), key=lambda e: e.name):
        try:
            register = ep.load()
        except ImportError as exc:  # a broken plug-in must not take the whole CLI down
            logger.warning("fedn: commands of %r are unavailable: %s", ep.name, exc)
            continue
        register(commands)
    return parser


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
