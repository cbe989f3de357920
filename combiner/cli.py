"""``fedn combiner start``."""

from __future__ import annotations

import argparse
import asyncio
import errno
import signal
import socket
from typing import TYPE_CHECKING

from combiner.settings import CombinerSettings
from fedn import heap
from fedn.config import add_settings_arguments, port_taken, settings_from_args
from fedn.errors import FednError
from fedn.logs import configure_logging
from fedn.tls import TLSFiles

if TYPE_CHECKING:
    from fedn.api_client import ReducerAPI

__all__ = ["register"]


def register(commands: argparse._SubParsersAction) -> None:
    combiner = commands.add_parser("combiner", help="run a combiner (partial aggregation server)")
    sub = combiner.add_subparsers(dest="combiner_command", metavar="ACTION", required=True)
    start = sub.add_parser(
        "start",
        help="start a combiner and register it with the reducer",
        description=(
            "Serve clients over gRPC: stream them the global model, fold their updates into a running "
            "weighted mean, and hand the partial to the reducer. Registers with the reducer and sends "
            "heartbeats; keeps serving while the reducer is away."
        ),
        epilog="example: fedn combiner start --name combiner-a --port 12080 --reducer http://10.0.0.1:8092 "
        "--models file:///shared/models",
    )
    add_settings_arguments(start, CombinerSettings, "FEDN_COMBINER_")
    start.set_defaults(func=_start)


def _start(args: argparse.Namespace) -> int:
    settings = settings_from_args(CombinerSettings, args)
    heap.limit_arenas(settings.malloc_arenas)  # before gRPC and the worker threads start
    _check_port(settings.host, settings.port)
    configure_logging(args.log_level, service=settings.name)
    # imported here: `fedn` parses every command's flags, and no other process needs the combiner's modules
    from fedn.api_client import ReducerAPI
    from fedn.store import open_model_store

    models = open_model_store(settings.models)
    tls = TLSFiles(settings.tls_cert, settings.tls_key, settings.ca_file)
    with ReducerAPI(
        settings.reducer, timeout_s=10.0, token=settings.token.get_secret_value() if settings.token else None, tls=tls
    ) as reducer:
        try:
            asyncio.run(_serve(settings, models, reducer))
        except RuntimeError as exc:  # grpc's bind failure is a bare RuntimeError: one line, not a traceback
            if "Failed to bind" not in str(exc):
                raise
            raise port_taken(settings.host, settings.port, "FEDN_COMBINER_PORT") from None
    return 0


def _check_port(host: str, port: int) -> None:
    """Refuse a taken port before gRPC tries it: gRPC logs its own multi-line error, and with
    SO_REUSEPORT it may even share the port with another server silently."""
    if port == 0:
        return
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise port_taken(host, port, "FEDN_COMBINER_PORT") from None
        # anything else (an address not on this host, say): gRPC's own bind reports it


async def _serve(settings: CombinerSettings, models, reducer: ReducerAPI) -> None:
    from combiner.server import CombinerServer

    server = CombinerServer(settings, models, reducer)
    try:
        await server.start()
    except FednError as exc:
        if not exc.message.startswith("cannot bind"):
            raise
        raise port_taken(settings.host, settings.port, "FEDN_COMBINER_PORT") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop()
