"""``fedn model list|download|upload``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fedn.cli.connect import add_reducer_arguments, reducer_api
from fedn.cli.listing import add_list_arguments, list_limit, print_json, report_truncation
from fedn.codec import encode_model
from fedn.errors import InvalidArgument
from fedn.loading import construct, load_object

__all__ = ["parse_client_args", "register"]


def register(commands: argparse._SubParsersAction) -> None:
    model = commands.add_parser("model", help="list, download and upload models")
    sub = model.add_subparsers(dest="model_command", metavar="ACTION", required=True)

    lst = sub.add_parser("list", help="list models, newest first")
    add_reducer_arguments(lst)
    lst.add_argument("--session", default=None, help="only models of this session")
    add_list_arguments(lst, "models")
    lst.set_defaults(func=_list)

    show = sub.add_parser("show", help="show one model's record (id, session, round, size, sha256)")
    show.add_argument("model_id")
    show.add_argument("--json", action="store_true", help="one JSON document instead of name: value lines")
    add_reducer_arguments(show)
    show.set_defaults(func=_show)

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
    limit = list_limit(args)
    with reducer_api(args) as api:
        page = api.list_models(session_id=args.session, limit=limit)
    if args.json:
        print_json(page)
        return 0
    for m in page:
        print(f"{m.id}  {m.num_parameters:>10} params  {m.size_bytes:>10} bytes  session={m.session_id or '-'}")
    report_truncation(page, "models")
    return 0


def _show(args: argparse.Namespace) -> int:
    with reducer_api(args) as api:
        record = api.get_model(args.model_id)
    document = record.model_dump(mode="json")
    if args.json:
        print(json.dumps(document, indent=2))
        return 0
    document["tensors"] = len(document["tensors"])  # the manifest is in --json; a count reads better here
    for name, value in document.items():
        print(f"{name + ':':<16} {'-' if value is None else value}")
    return 0


def _download(args: argparse.Namespace) -> int:
    out = Path(args.output or f"{args.model_id}.safetensors")
    with reducer_api(args) as api:
        blob = api.download_model(args.model_id)
    try:
        out.write_bytes(blob)
    except OSError as exc:
        raise InvalidArgument(f"cannot write {out}: {exc.strerror or exc}; choose another file with -o") from None
    print(f"wrote {out}")
    return 0


def _upload(args: argparse.Namespace) -> int:
    if args.file:
        try:
            blob = Path(args.file).read_bytes()
        except OSError as exc:
            raise InvalidArgument(f"cannot read --file {args.file}: {exc.strerror or exc}") from None
    else:
        cls = load_object(args.client)
        user_client = construct(cls, args.client, parse_client_args(args.client_arg))
        try:
            blob = encode_model(user_client.initial_parameters())
        except Exception as exc:
            raise InvalidArgument(f"{args.client}.initial_parameters() failed: {type(exc).__name__}: {exc}") from None
    with reducer_api(args) as api:
        record = api.upload_model(blob)
    print(f"uploaded model {record.id} ({record.num_parameters} parameters)")
    return 0
