"""What every ``fedn … list`` command shares: ``--limit``/``--all``/``--json``, and never stopping silently.

A list prints at most ``--limit`` records (default 100), or all with ``--all``, following the
reducer's page cursors (:meth:`fedn.api_client.ReducerAPI.iter_pages`). When it stops before the end
it says so on stderr (``100 of 2345 shown; --all or --limit N for more``), so a table or a pipe is
never mistaken for the whole list. ``--json`` prints one document, ``{"items": [...], "total": N}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from pydantic import BaseModel

from fedn.api_client import Page
from fedn.errors import InvalidArgument
from fedn.rest_records import record_to_rest

__all__ = ["DEFAULT_LIMIT", "add_list_arguments", "list_limit", "print_json", "report_truncation"]

DEFAULT_LIMIT = 100


def add_list_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """``--limit``, ``--all`` and ``--json`` on a list command of ``what`` (e.g. "sessions")."""
    parser.add_argument(
        "--limit", type=int, default=DEFAULT_LIMIT, help=f"show at most this many {what} [default {DEFAULT_LIMIT}]"
    )
    parser.add_argument("--all", action="store_true", help=f"show every {what[:-1]}, however many (ignores --limit)")
    parser.add_argument("--json", action="store_true", help='print one JSON document: {"items": [...], "total": N}')


def list_limit(args: argparse.Namespace) -> int | None:
    """How many records to fetch: None for ``--all``; InvalidArgument for a ``--limit`` below 1."""
    if args.all:
        return None
    if args.limit < 1:
        raise InvalidArgument(f"--limit must be at least 1, not {args.limit} (or use --all)")
    return args.limit


def print_json(page: Page, items: Sequence[BaseModel] | None = None) -> None:
    """The records as the REST API shows them (ISO 8601 times), with the reducer's total."""
    records = page if items is None else items
    print(json.dumps({"items": [record_to_rest(r) for r in records], "total": page.total}, indent=2))


def report_truncation(page: Page, what: str) -> None:
    """One stderr line when records were left out; nothing when all of them were shown."""
    if not page.is_complete or len(page) < page.total:
        print(f"{len(page)} of {page.total} shown; use --all or --limit N for more {what}", file=sys.stderr)
