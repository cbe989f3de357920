"""``fedn reducer start``."""

from __future__ import annotations

import argparse
import signal
import threading

from fedn.config import add_settings_arguments, port_taken, settings_from_args
from fedn.errors import FednError
from fedn.logs import configure_logging
from reducer.settings import ReducerSettings

__all__ = ["register"]


def register(commands: argparse._SubParsersAction) -> None:
    reducer = commands.add_parser("reducer", help="run the reducer (sessions, global model, REST API)")
    sub = reducer.add_subparsers(dest="reducer_command", metavar="ACTION", required=True)
    start = sub.add_parser(
        "start",
        help="start the reducer and its REST API",
        description=(
            "Own sessions and rounds, assign clients to combiners, merge the combiners' partials into the "
            "global model, and serve the REST API under /api/v1. Sessions left running by a previous "
            "reducer on the same stores resume."
        ),
        epilog="example: fedn reducer start --host 0.0.0.0 --port 8092 --state sqlite:////var/lib/fedn/state.db "
        "--models file:///var/lib/fedn/models",
    )
    add_settings_arguments(start, ReducerSettings, "FEDN_REDUCER_")
    start.set_defaults(func=_start)


def _start(args: argparse.Namespace) -> int:
    settings = settings_from_args(ReducerSettings, args)
    configure_logging(args.log_level, service="reducer")
    from reducer.server import ReducerServer  # here: `fedn` parses every command's flags, no process needs Flask

    server = ReducerServer(settings)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        server.start()
    except FednError as exc:
        if not exc.message.startswith("cannot bind"):
            raise
        server.stop()
        raise port_taken(settings.host, settings.port, "FEDN_REDUCER_PORT") from None
    try:
        while not stop.wait(1.0):
            pass
    finally:
        server.stop()
    return 0
