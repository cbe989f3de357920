"""How a CLI command reaches the reducer: its URL, a token and the CA, from flags or the environment.

Tokens are never flags (a command line is visible to every user of the host, and kept in shell
history): they come from ``FEDN_TOKEN`` or a file (``--token-file`` / ``FEDN_TOKEN_FILE``).
"""

from __future__ import annotations

import argparse
import os

from fedn.api_client import DEFAULT_REDUCER_URL, ReducerAPI
from fedn.errors import InvalidArgument

__all__ = ["add_reducer_arguments", "reducer_api", "token_from"]


def add_reducer_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reducer",
        default=os.environ.get("FEDN_REDUCER", DEFAULT_REDUCER_URL),
        help=f"reducer URL [env FEDN_REDUCER; default {DEFAULT_REDUCER_URL}]",
    )
    parser.add_argument(
        "--token-file",
        default=os.environ.get("FEDN_TOKEN_FILE"),
        metavar="FILE",
        help="file holding your token [env FEDN_TOKEN_FILE, or the token itself in FEDN_TOKEN]",
    )
    parser.add_argument(
        "--ca-file",
        default=os.environ.get("FEDN_CA_FILE"),
        metavar="FILE",
        help="CA certificate an https:// reducer's certificate must chain to [env FEDN_CA_FILE; default the "
        "system's trust store]",
    )


def token_from(token_file: str | None, env: str = "FEDN_TOKEN") -> str | None:
    """The token in ``token_file``, else in the environment variable ``env``, else None."""
    from fedn.auth.tokens import read_token_file

    if token_file:
        return read_token_file(token_file)
    token = os.environ.get(env, "").strip()
    return token or None


def reducer_api(args: argparse.Namespace, *, timeout_s: float = 30.0) -> ReducerAPI:
    """A client of the reducer named by the command's ``--reducer``, ``--token-file`` and ``--ca-file``."""
    from fedn.tls import TLSFiles

    tls = TLSFiles(ca_file=args.ca_file)
    if args.ca_file and not args.reducer.startswith("https://"):
        raise InvalidArgument(f"--ca-file is for an https:// reducer; --reducer is {args.reducer}")
    return ReducerAPI(args.reducer, timeout_s=timeout_s, token=token_from(args.token_file), tls=tls)
