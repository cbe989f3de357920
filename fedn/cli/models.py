"""``fedn model list|download|upload``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fedn.cli.connect import add_reducer_arguments, reducer_api
from fedn.codec import encode_model
from fedn.errors import InvalidArgument
from fedn.loading import load_object

__all__ = ["parse_client_args", "register"]


def register(commands: argparse._SubParsersAction) -> None:
    model = commands.add_parser("model", help="list, download and upload models")
    sub = model.add_subparsers(dest="model_command", metavar="ACTION", required=True)

    lst = sub.add_parser("list", help="list models, newest first")
    add_reducer_arguments(lst)
    lst.add_argument("--session", default=None, help="only models of this session")
    lst.set_defaults(func=_list)

    dl = sub.add_parser("download", help="download a model as a safetensors file")
    dl.add_argument("model_id")
    dl.add_argument("-o", "--output", default=None, help="file to write [default MODEL_ID.safetensors]")
    add_reducer_arguments(dl)
    dl.set_defaults(func=_download)

    up = sub.add_parser("upload", help="upload a seed model (a safetensors file, or one made by a client class)")
    source = up.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", help="safetensors file to upload")
    source.add_argument("--client", help="module:Class whose initial_parameters() gives the seed model")
    up.add_argument(
        "--client-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keyword argument for the client class (value parsed as JSON when it can be)",
    )
    add_reducer_arguments(up)
    up.set_defaults(func=_upload)


def parse_client_args(pairs: list[str]) -> dict:
    """``["k=v", ...]`` to keyword arguments, values decoded as JSON where possible."""
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"client argument {pair!r} is not KEY=VALUE")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def _list(args: argparse.Namespace) -> int:
    with reducer_api(args) as api:
        for m in api.list_models(session_id=args.session):
            print(f"{m.id}  {m.num_parameters:>10} params  {m.size_bytes:>10} bytes  session={m.session_id or '-'}")
    return 0


def _download(args: argparse.Namespace) -> int:
    out = Path(args.output or f"{args.model_id}.safetensors")
    with reducer_api(args) as api:
        out.write_bytes(api.download_model(args.model_id))
    print(f"wrote {out}")
    return 0


def _upload(args: argparse.Namespace) -> int:
    if args.file:
        blob = Path(args.file).read_bytes()
    else:
        cls = load_object(args.client)
        blob = encode_model(cls(**parse_client_args(args.client_arg)).initial_parameters())
    with reducer_api(args) as api:
        record = api.upload_model(blob)
    print(f"uploaded model {record.id} ({record.num_parameters} parameters)")
    return 0
