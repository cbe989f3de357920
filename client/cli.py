"""``fedn client start``."""

from __future__ import annotations

import argparse
import os
import signal
import socket

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from fedn.cli.models import parse_client_args
from fedn.config import add_settings_arguments, settings_from_args
from fedn.errors import InvalidArgument
from fedn.loading import construct, flower_client, load_object
from fedn.logs import configure_logging
from fedn.tls import TLSFiles

__all__ = ["ClientSettings", "register"]


class ClientSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FEDN_CLIENT_")

    reducer: str = Field("http://127.0.0.1:8092", description="reducer base URL")
    client: str | None = Field(None, description="your client class, module:Class")
    name: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}", description="client name")
    heartbeat_timeout_s: float = Field(10.0, gt=0, description="reconnect after this long without a message")
    max_model_bytes: int = Field(
        4 << 30,
        gt=0,
        description="largest global model this client downloads; a larger one is refused from its header, before "
        "any of it is downloaded, and the round reported as failed (a combiner cannot make it exhaust memory)",
    )
    token: SecretStr | None = Field(
        None,
        description="this client's token (role client); its subject is the client's id",
        json_schema_extra={"secret": True},
    )
    ca_file: str | None = Field(
        None, description="CA the reducer's and combiners' certificates must chain to: TLS to both"
    )
    tls_cert: str | None = Field(None, description="this client's certificate, for mutual TLS")
    tls_key: str | None = Field(None, description="the certificate's private key")


def register(commands: argparse._SubParsersAction) -> None:
    client = commands.add_parser("client", help="run a client (your train/evaluate code)")
    sub = client.add_subparsers(dest="client_command", metavar="ACTION", required=True)
    start = sub.add_parser(
        "start",
        help="connect a client to the federation and train when asked",
        description=(
            "Instantiate your client class (module:Class, with --client-arg keyword arguments), ask the "
            "reducer for a combiner, and run its train() on every round it is asked to. Reconnects by itself."
        ),
        epilog="example: fedn client start --reducer http://10.0.0.1:8092 --client examples.digits:DigitsClient "
        "--client-arg partition=0 --client-arg num_partitions=4",
    )
    add_settings_arguments(start, ClientSettings, "FEDN_CLIENT_")
    start.add_argument(
        "--client-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keyword argument for the client class (value parsed as JSON when it can be)",
    )
    start.add_argument(
        "--flower",
        default=None,
        metavar="MODULE:CLIENT_FN",
        help="run a Flower client unchanged: client_fn(context) returning a NumPyClient, instead of --client "
        "(docs/flower.md)",
    )
    start.set_defaults(func=_start)


def _start(args: argparse.Namespace) -> int:
    settings = settings_from_args(ClientSettings, args)
    configure_logging(args.log_level, service=settings.name)
    if args.flower and settings.client:
        raise InvalidArgument("give --client or --flower, not both")
    if args.flower:
        settings.client, args.client_arg = flower_client(args.flower, args.client_arg)
    if not settings.client:
        raise InvalidArgument("--client module:Class (or --flower module:client_fn) is required")
    cls = load_object(settings.client)
    user_client = construct(cls, settings.client, parse_client_args(args.client_arg))
    tls = TLSFiles(cert_file=settings.tls_cert, key_file=settings.tls_key, ca_file=settings.ca_file)
    tls.check()
    token = settings.token.get_secret_value() if settings.token else None
    # imported here: `fedn` parses every command's flags, and no other process needs gRPC's client
    from client.runtime import ClientRuntime
    from fedn.api_client import ReducerAPI

    with ReducerAPI(settings.reducer, timeout_s=10.0, token=token, tls=tls) as reducer:
        runtime = ClientRuntime(
            user_client,
            reducer,
            name=settings.name,
            heartbeat_timeout_s=settings.heartbeat_timeout_s,
            max_model_bytes=settings.max_model_bytes,
            tls=tls,
            token=token,
        )
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: runtime.stop())
        runtime.run()
    return 0
