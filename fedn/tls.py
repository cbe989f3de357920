"""TLS for every fedn link: a federation CA, the certificates it issues, and the credentials built from them.

One certificate serves a process's server side and its mutual-TLS client side (EKU serverAuth and
clientAuth). Keys are ECDSA P-256 (gRPC's BoringSSL and Python's ``ssl`` both take them), written 0600
through a temporary file and a rename, so a crash never leaves half a key. A file that cannot be read
or parsed is an InvalidArgument naming the flag (``--tls-key /x/y.key: not a PEM private key``),
checked before gRPC or ``ssl`` sees it: both fail later and less clearly (gRPC only at bind time).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import re
import ssl
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedn.errors import Conflict, InvalidArgument
from fedn.ids import ID_PATTERN, check_id

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "TLSFiles",
    "channel_credentials",
    "check_exposure",
    "client_ssl_context",
    "create_ca",
    "is_loopback",
    "issue_certificate",
    "load_certificates",
    "peer_common_name",
    "server_credentials",
    "server_ssl_context",
]

logger = logging.getLogger(__name__)

CA_CERT_FILE, CA_KEY_FILE = "ca.pem", "ca.key"
# Flags the files arrive by, so an error names what the operator typed.
CERT_FLAG, KEY_FLAG, CA_FLAG, CLIENT_CA_FLAG = "--tls-cert", "--tls-key", "--ca-file", "--client-ca"
_BACKDATE = dt.timedelta(minutes=5)  # tolerate clocks a little behind the issuer's
_DNS_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_DNS_NAME_RE = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$")
_ID_RE = re.compile(ID_PATTERN)
_T = TypeVar("_T")
_MAX_CN_CHARS = 64  # X.509's upper bound on a common name (RFC 5280)


def create_ca(out_dir: Path, *, common_name: str = "fedn federation CA", days: int = 3650) -> tuple[Path, Path]:
    """A new federation CA: ``ca.pem`` (give it to every peer) and ``ca.key`` (0600, keep it offline).

    Refuses (Conflict) to overwrite an existing ``ca.pem`` or ``ca.key``: every certificate issued
    from an old CA would stop verifying.
    """
    out_dir = Path(out_dir)
    _check_days(days)
    cert_path, key_path = out_dir / CA_CERT_FILE, out_dir / CA_KEY_FILE
    for path in (cert_path, key_path):
        if path.exists():
            raise Conflict(f"--out {out_dir}: {path.name} exists; refusing to overwrite a CA (move it away first)")
    if not 1 <= len(common_name) <= _MAX_CN_CHARS or not common_name.isprintable():
        raise InvalidArgument(f"--name {common_name!r}: the CA's name must be 1 to 64 printable characters")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_atomic(key_path, _key_pem(key), 0o600, overwrite=False, flag="--out")
    _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644, overwrite=False, flag="--out")
    logger.debug("created CA %r in %s (valid until %s)", common_name, out_dir, cert.not_valid_after_utc.date())
    return cert_path, key_path


def issue_certificate(
    ca_dir: Path, name: str, hosts: Sequence[str], out_dir: Path, *, days: int = 825
) -> tuple[Path, Path]:
    """``NAME.pem`` and ``NAME.key`` (0600) signed by the CA in ``ca_dir``, for the hosts a peer dials.

    CN is ``name`` (the identity mTLS gives a client or combiner); SANs are every host (IP addresses as
    IP SANs, names as DNS SANs) and ``name`` itself when it is a DNS name. The certificate never
    outlives its CA. An existing pair of the same name is replaced (renewal).
    """
    if len(check_id(name, "certificate name")) > _MAX_CN_CHARS:
        raise InvalidArgument(f"certificate name {name[:20]!r}...: at most {_MAX_CN_CHARS} characters (X.509 CN)")
    _check_days(days)
    ca_dir, out_dir = Path(ca_dir), Path(out_dir)
    ca_cert = load_certificates(ca_dir / CA_CERT_FILE, "--ca")[0]
    ca_key = _load_private_key(ca_dir / CA_KEY_FILE, "--ca")
    if not _same_key(ca_cert, ca_key):
        raise InvalidArgument(f"--ca {ca_dir}: {CA_KEY_FILE} is not the key of {CA_CERT_FILE}")
    if not _is_ca(ca_cert):
        raise InvalidArgument(f"--ca {ca_dir}: {CA_CERT_FILE} is not a CA certificate")
    sans = _subject_alt_names(name, hosts)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    if not_after <= now:
        raise InvalidArgument(f"--ca {ca_dir}: the CA expired on {ca_cert.not_valid_after_utc.isoformat()}")
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = out_dir / f"{name}.pem", out_dir / f"{name}.key"  # name is an id: no path separators
    _write_atomic(key_path, _key_pem(key), 0o600, overwrite=True, flag="--out")
    _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644, overwrite=True, flag="--out")
    logger.debug("issued certificate %r for %s (valid until %s)", name, [str(n.value) for n in sans], not_after.date())
    return cert_path, key_path


def server_credentials(cert_file: str, key_file: str, client_ca_file: str | None = None) -> grpc.ServerCredentials:
    """gRPC server credentials; mutual TLS (a client certificate from ``client_ca_file`` required) when given."""
    cert_pem, key_pem = _checked_pair(cert_file, key_file)
    client_ca = _read_certificates_pem(client_ca_file, CLIENT_CA_FLAG) if client_ca_file else None
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def channel_credentials(
    ca_file: str | None, cert_file: str | None = None, key_file: str | None = None
) -> grpc.ChannelCredentials:
    """gRPC channel credentials trusting ``ca_file`` (None: gRPC's default roots), presenting the
    certificate and key when given (for a server that requires mutual TLS)."""
    ca = _read_certificates_pem(ca_file, CA_FLAG) if ca_file else None
    cert_pem = key_pem = None
    if cert_file or key_file:
        cert_pem, key_pem = _checked_pair(cert_file, key_file)
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key_pem, certificate_chain=cert_pem)


def server_ssl_context(cert_file: str, key_file: str, client_ca_file: str | None = None) -> ssl.SSLContext:
    """An ``ssl`` server context, TLS 1.2 or newer; a client certificate from ``client_ca_file`` required when given."""
    _checked_pair(cert_file, key_file)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _ssl_load(f"{CERT_FLAG} {cert_file}", lambda: ctx.load_cert_chain(cert_file, key_file))
    if client_ca_file:
        cadata = _read_certificates_pem(client_ca_file, CLIENT_CA_FLAG).decode("latin-1")
        ctx.verify_mode = ssl.CERT_REQUIRED
        _ssl_load(f"{CLIENT_CA_FLAG} {client_ca_file}", lambda: ctx.load_verify_locations(cadata=cadata))
    return ctx


def client_ssl_context(
    ca_file: str | None, cert_file: str | None = None, key_file: str | None = None
) -> ssl.SSLContext:
    """The context httpx gets as ``verify=``: trusts ``ca_file`` (None: the system's trust store), checks
    the host name, and presents the certificate and key when given."""
    cadata = _read_certificates_pem(ca_file, CA_FLAG).decode("latin-1") if ca_file else None
    # cadata given: that CA only, not the system's roots as well
    ctx = _ssl_load(f"{CA_FLAG} {ca_file}", lambda: ssl.create_default_context(cadata=cadata))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file or key_file:
        _checked_pair(cert_file, key_file)
        _ssl_load(f"{CERT_FLAG} {cert_file}", lambda: ctx.load_cert_chain(cert_file, key_file))
    return ctx


def peer_common_name(auth_context: Mapping[str, Sequence[bytes]]) -> str | None:
    """The CN of the verified client certificate in ``context.auth_context()``; None when the peer
    presented none, or when its CN is not a valid fedn id (such a certificate names no fedn identity).

    Only a server with a client CA (mutual TLS) asks for and verifies one; without it this is None.
    """
    values = auth_context.get("x509_common_name") or ()
    if not values:
        return None
    name = values[0].decode("utf-8", "replace")
    if not _ID_RE.fullmatch(name) or name in (".", ".."):
        logger.warning("peer certificate CN %r is not a valid fedn id; treated as no identity", name[:64])
        return None
    return name


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 (bracketed or not) and ``localhost``; an empty host or ``0.0.0.0``
    binds every interface and is not loopback."""
    host = host.strip().lower().removeprefix("[").removesuffix("]")
    if host in ("localhost", "localhost."):
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def check_exposure(host: str, *, tls: bool, auth: bool, insecure: bool, service: str) -> None:
    """Refuse to listen on a non-loopback ``host`` unless both TLS and token auth are on.

    Raises InvalidArgument telling the operator what to pass; ``insecure`` turns the refusal into one
    WARNING line (an explicit, logged choice). Loopback without either is allowed: only this machine
    can connect.
    """
    if tls and auth:
        return
    missing = " and ".join(what for what, on in (("TLS", tls), ("token auth", auth)) if not on)
    if is_loopback(host):
        logger.debug("%s: listening on loopback %s without %s", service, host, missing)
        return
    shown = host or "every interface"
    if insecure:
        logger.warning(
            "%s: listening on %s without %s (--insecure); anyone who can reach it can use it", service, shown, missing
        )
        return
    raise InvalidArgument(
        f"{service}: refusing to listen on {shown} without {missing}: give {CERT_FLAG}/{KEY_FLAG} and a token key,"
        " bind a loopback address, or pass --insecure to accept this on purpose"
    )


@dataclass(frozen=True)
class TLSFiles:
    """The TLS files a process was given on its command line; each may be None."""

    cert_file: str | None = None
    key_file: str | None = None
    ca_file: str | None = None
    client_ca_file: str | None = None

    @property
    def has_identity(self) -> bool:
        """True when a certificate and key were given (a server can serve TLS, a client can do mTLS)."""
        return bool(self.cert_file and self.key_file)

    def check(self) -> None:
        """Fail at start-up, not at the first connection: cert and key both or neither, a client CA only
        with them, and every named file readable and of the right kind."""
        if self.cert_file or self.key_file:
            _checked_pair(self.cert_file, self.key_file)
        elif self.client_ca_file:
            raise InvalidArgument(f"{CLIENT_CA_FLAG} needs {CERT_FLAG} and {KEY_FLAG}: mutual TLS runs over TLS")
        if self.ca_file:
            _read_certificates_pem(self.ca_file, CA_FLAG)
        if self.client_ca_file:
            _read_certificates_pem(self.client_ca_file, CLIENT_CA_FLAG)


def _check_days(days: int) -> None:
    if not isinstance(days, int) or not 1 <= days <= 100 * 366:
        raise InvalidArgument(f"--days {days!r}: must be a whole number of days from 1 to 36600")


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    # digital_signature (ECDHE handshakes), and certificate/CRL signing for a CA only
    return x509.KeyUsage(True, False, False, False, False, ca, ca, False, False)


def _subject_alt_names(name: str, hosts: Sequence[str]) -> list[x509.GeneralName]:
    sans: list[x509.GeneralName] = []
    for host in [*hosts, *([name] if _DNS_NAME_RE.fullmatch(name) else [])]:
        try:
            san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
        except ValueError:
            if not _DNS_NAME_RE.fullmatch(host) or len(host) > 253:
                raise InvalidArgument(f"--host {host!r}: not an IP address or a DNS name") from None
            san = x509.DNSName(host.lower())
        if san not in sans:
            sans.append(san)
    if not sans:
        raise InvalidArgument(f"certificate {name!r} needs at least one --host (the name or address peers dial)")
    return sans


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _same_key(cert: x509.Certificate, key: object) -> bool:
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return cert.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)  # type: ignore[attr-defined]


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _read(path: str | Path, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"{flag} {path}: cannot read it: {exc.strerror or exc}") from None


def load_certificates(path: str | Path, flag: str) -> list[x509.Certificate]:
    """The certificates in a PEM file, leaf first; InvalidArgument naming ``flag`` when unreadable."""
    try:
        return x509.load_pem_x509_certificates(_read(path, flag))
    except ValueError:
        raise InvalidArgument(f"{flag} {path}: not a PEM certificate") from None


def _read_certificates_pem(path: str, flag: str) -> bytes:
    load_certificates(path, flag)
    return _read(path, flag)


def _load_private_key(path: str | Path, flag: str) -> ec.EllipticCurvePrivateKey:
    try:
        return serialization.load_pem_private_key(_read(path, flag), password=None)  # type: ignore[return-value]
    except TypeError:
        raise InvalidArgument(f"{flag} {path}: the key is encrypted; give an unencrypted key (mode 0600)") from None
    except (ValueError, UnsupportedAlgorithm):
        raise InvalidArgument(f"{flag} {path}: not a PEM private key") from None


def _checked_pair(cert_file: str | None, key_file: str | None) -> tuple[bytes, bytes]:
    """The PEM bytes of a certificate and its key, after checking both parse and belong together."""
    if not cert_file or not key_file:
        given, other = (CERT_FLAG, KEY_FLAG) if cert_file else (KEY_FLAG, CERT_FLAG)
        raise InvalidArgument(f"{given} needs {other}: give the certificate and its key together")
    cert = load_certificates(cert_file, CERT_FLAG)[0]
    key = _load_private_key(key_file, KEY_FLAG)
    if not _same_key(cert, key):
        raise InvalidArgument(f"{KEY_FLAG} {key_file}: not the key of the certificate in {CERT_FLAG} {cert_file}")
    return _read(cert_file, CERT_FLAG), _read(key_file, KEY_FLAG)


def _ssl_load(what: str, load: Callable[[], _T]) -> _T:
    try:
        return load()
    except (ssl.SSLError, OSError) as exc:
        raise InvalidArgument(f"{what}: {exc}") from None


def _write_atomic(path: Path, data: bytes, mode: int, *, overwrite: bool, flag: str) -> None:
    """Write through a temporary file in the same directory, then rename (or hard-link, so an
    existing file is never replaced when ``overwrite`` is False): readers see all of it or nothing."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise InvalidArgument(f"{flag} {path.parent}: cannot write there: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    except FileExistsError:
        raise Conflict(f"{flag} {path.parent}: {path.name} exists; refusing to overwrite it") from None
    except OSError as exc:
        raise InvalidArgument(f"{flag} {path}: cannot write it: {exc.strerror or exc}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
