"""``fedn certs ca|issue|show``: a federation CA and the certificates its reducer, combiners and clients use."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from fedn.tls import CA_CERT_FILE, CA_KEY_FILE, create_ca, issue_certificate, load_certificates

__all__ = ["describe_certificate", "register"]

_WORKFLOW = """\
A federation over several hosts, with one CA kept on an admin machine:

  fedn certs ca --out ./ca
  fedn certs issue reducer --ca ./ca --host reducer.example.org --host 10.0.0.5 --out ./certs
  fedn certs issue combiner-0 --ca ./ca --host combiner-0.example.org --host 10.0.0.6 --out ./certs
  fedn certs issue client-17 --ca ./ca --out ./certs
  fedn certs show ./certs/combiner-0.pem

Copy NAME.pem, NAME.key (keep it mode 0600) and ca/ca.pem to each host and start the process with
--tls-cert NAME.pem --tls-key NAME.key --ca-file ca.pem; a server that should require client
certificates (mutual TLS) also gets --client-ca ca.pem. Under mutual TLS a certificate's name
(its CN) is the peer's identity, so issue a client's certificate under its client id.
ca/ca.key signs certificates: keep it off the federation's hosts.
"""


def register(commands: argparse._SubParsersAction) -> None:
    certs = commands.add_parser(
        "certs",
        help="create a federation CA and issue TLS certificates",
        description="Create a federation CA and issue the TLS certificates of the reducer, combiners and clients.",
        epilog=_WORKFLOW,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = certs.add_subparsers(dest="certs_command", metavar="ACTION", required=True)

    ca = sub.add_parser(
        "ca",
        help="create a new CA (ca.pem and ca.key) in a directory",
        description=f"Create a federation CA: {CA_CERT_FILE} goes to every host, {CA_KEY_FILE} (mode 0600) "
        "stays with whoever issues certificates. An existing CA is never overwritten.",
        epilog="example: fedn certs ca --out ./ca",
    )
    ca.add_argument("--out", required=True, type=Path, help="directory to write ca.pem and ca.key into")
    ca.add_argument("--days", type=int, default=3650, help="days the CA is valid [default 3650]")
    ca.add_argument("--name", default="fedn federation CA", help="the CA's common name [default 'fedn federation CA']")
    ca.set_defaults(func=_ca)

    issue = sub.add_parser(
        "issue",
        help="issue NAME.pem and NAME.key signed by the CA",
        description="Issue a certificate for one process, usable both as its TLS server certificate and as "
        "its mutual-TLS client certificate. NAME becomes the CN (the peer's identity under mutual TLS) and, "
        "when it is a DNS name, a DNS SAN; every --host is added as an IP or DNS SAN. Re-issuing a name "
        "replaces its files (renewal).",
        epilog="example: fedn certs issue combiner-0 --ca ./ca --host combiner-0.example.org --host 10.0.0.6",
    )
    issue.add_argument("name", metavar="NAME", help="the process's id: reducer, combiner or client id")
    issue.add_argument("--ca", required=True, type=Path, help="directory holding ca.pem and ca.key")
    issue.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="HOST",
        help="a name or IP address peers dial this process by; repeat for each [needed for servers]",
    )
    issue.add_argument("--out", type=Path, default=Path("."), help="directory to write into [default .]")
    issue.add_argument("--days", type=int, default=825, help="days the certificate is valid [default 825]")
    issue.set_defaults(func=_issue)

    show = sub.add_parser(
        "show",
        help="print a certificate's subject, SANs, issuer, expiry and fingerprint",
        description="Print what to check before deploying a certificate.",
        epilog="example: fedn certs show ./certs/combiner-0.pem",
    )
    show.add_argument("file", metavar="FILE", type=Path, help="a PEM certificate file")
    show.add_argument("--json", action="store_true", help="one JSON document: the fields and the chain's length")
    show.set_defaults(func=_show)


def describe_certificate(cert: x509.Certificate) -> dict[str, str]:
    """The fields an operator checks (who, for which hosts, signed by whom, until when), as text."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        san_text = ", ".join(
            f"{'IP' if isinstance(san, x509.IPAddress) else 'DNS'}:{san.value}"
            for san in sans
            if isinstance(san, x509.IPAddress | x509.DNSName)
        )
    except x509.ExtensionNotFound:
        san_text = "-"
    try:
        usage = ", ".join(u._name for u in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        usage = "-"
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    expired = cert.not_valid_after_utc < dt.datetime.now(dt.UTC)
    return {
        "subject": cert.subject.rfc4514_string(),
        "SANs": san_text or "-",
        "issuer": cert.issuer.rfc4514_string(),
        "CA": "yes" if is_ca else "no",
        "key usage": usage or "-",
        "not before": cert.not_valid_before_utc.isoformat(),
        "not after": cert.not_valid_after_utc.isoformat() + (" (EXPIRED)" if expired else ""),
        "sha256": cert.fingerprint(hashes.SHA256()).hex(":"),
    }


def _ca(args: argparse.Namespace) -> int:
    cert, key = create_ca(args.out, common_name=args.name, days=args.days)
    print(f"wrote {cert} (give it to every host) and {key} (mode 0600; keep it off the federation's hosts)")
    return 0


def _issue(args: argparse.Namespace) -> int:
    cert, key = issue_certificate(args.ca, args.name, args.host, args.out, days=args.days)
    print(f"wrote {cert} and {key} (mode 0600)")
    return 0


def _show(args: argparse.Namespace) -> int:
    certs = load_certificates(args.file, "FILE")
    if args.json:
        print(json.dumps({**describe_certificate(certs[0]), "chain": len(certs)}, indent=2))
        return 0
    for field, value in describe_certificate(certs[0]).items():
        print(f"{field + ':':<12} {value}")
    if len(certs) > 1:
        print(f"(and {len(certs) - 1} more certificate(s) in the file's chain)")
    return 0
