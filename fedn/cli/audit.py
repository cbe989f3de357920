"""``fedn audit list``: read the reducer's audit log (needs an admin token)."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from fedn.cli.connect import add_reducer_arguments, reducer_api
from fedn.cli.listing import add_list_arguments, list_limit, print_json, report_truncation
from fedn.ids import printable
from fedn.records import AuditEvent

__all__ = ["register"]

_COLUMNS = ("time", "subject", "role", "peer", "action", "target", "outcome", "detail")
_EPILOG = """\
examples (with FEDN_TOKEN_FILE pointing at an admin token):
  fedn audit list --action auth.denied --limit 50
  fedn audit list --subject hospital-3 --all --json | jq '.items[].target'
"""


def register(commands: argparse._SubParsersAction) -> None:
    audit = commands.add_parser(
        "audit",
        help="read the audit log (admin)",
        description="Security-relevant events the reducer recorded: who did what, from where, and the outcome.",
    )
    sub = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    lst = sub.add_parser(
        "list",
        help="list audit events, newest first",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_reducer_arguments(lst)
    add_list_arguments(lst, "events")
    lst.add_argument("--action", default=None, help="only this action, e.g. auth.denied or token.issue")
    lst.add_argument("--subject", default=None, help="only events of this subject")
    lst.set_defaults(func=_list)


def _list(args: argparse.Namespace) -> int:
    limit = list_limit(args)
    with reducer_api(args) as api:  # follows the reducer's page cursors up to the limit
        events = api.list_audit(limit=limit, action=args.action, subject=args.subject)
    if args.json:
        print_json(events)
        return 0
    _print_table(events)
    report_truncation(events, "events")
    return 0


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _print_table(events: list[AuditEvent]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in _COLUMNS:
        table.add_column("time (UTC)" if column == "time" else column, overflow="fold")
    for e in events:
        values = (_when(e.time), e.subject, e.role, e.peer, e.action, e.target, e.outcome, e.detail)
        # Text, not str: a stored value is shown as it is, never read as rich markup
        table.add_row(*(Text(printable(v) or "-") for v in values[:-1]), Text(printable(e.detail)))
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(table)
    console.print(f"{len(events)} events", highlight=False)
