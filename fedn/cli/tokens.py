"""``fedn token keygen|create|list|revoke``: the federation's signing key and the tokens it signs."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from fedn.auth.tokens import DEFAULT_TTL_S, Role, parse_ttl
from fedn.cli.connect import add_reducer_arguments, reducer_api
from fedn.cli.listing import add_list_arguments, list_limit, print_json, report_truncation

__all__ = ["register"]

_ROLES = ", ".join(r.value for r in Role)
_EPILOG = """\
example, once per federation (the key stays with the reducer; combiners get the .pub file):
  fedn token keygen --out secrets/
  fedn token create --key secrets/token-signing.key --role admin --subject alice --out secrets/alice.token
then, with the reducer running and FEDN_TOKEN_FILE=secrets/alice.token:
  fedn token create --role client --subject hospital-3 --ttl 180d --out hospital-3.token
  fedn token list
  fedn token revoke TOKEN_ID
"""


def register(commands: argparse._SubParsersAction) -> None:
    token = commands.add_parser(
        "token",
        help="make the signing key, issue, list and revoke tokens",
        description="Tokens say who a caller is (its subject) and what it may do (its role: " + _ROLES + ").",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)

    keygen = sub.add_parser("keygen", help="create the federation's token-signing key pair (Ed25519)")
    keygen.add_argument("--out", required=True, type=Path, help="directory for token-signing.key and .pub")
    keygen.set_defaults(func=_keygen)

    create = sub.add_parser(
        "create",
        help="issue a token (through the reducer, or offline with --key)",
        description="Issue a token. With --key the token is signed here (bootstrap the first admin token this "
        "way); without, the reducer signs and records it (needs an admin token).",
    )
    create.add_argument("--role", required=True, choices=[r.value for r in Role], help="what the token may do")
    create.add_argument("--subject", required=True, help="who it is: a client or combiner id, or a person's name")
    create.add_argument("--ttl", default=f"{DEFAULT_TTL_S // 86400}d", help="lifetime: 90d, 12h, 30m [default 30d]")
    create.add_argument("--key", type=Path, help="sign offline with this private key (token-signing.key)")
    create.add_argument("--out", type=Path, help="write the token to this file (mode 0600) instead of stdout")
    add_reducer_arguments(create)
    create.set_defaults(func=_create)

    lst = sub.add_parser("list", help="tokens the reducer issued (never the tokens themselves)")
    lst.add_argument("--include-expired", action="store_true", help="list expired tokens too")
    add_list_arguments(lst, "tokens")
    add_reducer_arguments(lst)
    lst.set_defaults(func=_list)

    revoke = sub.add_parser("revoke", help="revoke a token by its id (combiners refuse it from their next heartbeat)")
    revoke.add_argument("token_id")
    add_reducer_arguments(revoke)
    revoke.set_defaults(func=_revoke)


def _keygen(args: argparse.Namespace) -> int:
    from fedn.auth.tokens import generate_signing_key

    key, pub = generate_signing_key(args.out)
    print(f"wrote {key} (keep it secret: it signs tokens) and {pub} (give it to combiners)")
    return 0


def _write_secret(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")


def _create(args: argparse.Namespace) -> int:
    ttl_s = parse_ttl(args.ttl)
    if args.key is not None:
        from fedn.auth.tokens import TokenIssuer, load_private_key

        issued = TokenIssuer(load_private_key(args.key, "--key")).issue(args.role, args.subject, ttl_s)
        token, token_id, expires_at = issued.token, issued.principal.token_id, issued.principal.expires_at
    else:
        with reducer_api(args) as api:
            answer = api.issue_token(args.role, args.subject, ttl_s)
        token, token_id, expires_at = answer["token"], answer["id"], answer["expires_at"]
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(expires_at))
    if args.out is not None:
        _write_secret(args.out, token)
        print(f"wrote token {token_id} ({args.role} {args.subject}, expires {when}) to {args.out}", file=sys.stderr)
    else:
        print(f"token {token_id} ({args.role} {args.subject}, expires {when}):", file=sys.stderr)
        print(token)
    return 0


def _list(args: argparse.Namespace) -> int:
    limit = list_limit(args)
    with reducer_api(args) as api:
        tokens = api.list_tokens(include_expired=args.include_expired, limit=limit)
    if args.json:
        print_json(tokens)
        return 0
    print(f"{'ID':24} {'ROLE':9} {'SUBJECT':24} {'EXPIRES (UTC)':17} STATE")
    now = time.time()
    for t in tokens:
        state = "revoked" if t.revoked_at is not None else ("expired" if t.expires_at < now else "valid")
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(t.expires_at))
        print(f"{t.id:24} {t.role or '-':9} {t.subject or '-':24} {when:17} {state}")
    report_truncation(tokens, "tokens")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    with reducer_api(args) as api:
        record = api.revoke_token(args.token_id)
    print(f"revoked token {record['id']}")
    return 0
