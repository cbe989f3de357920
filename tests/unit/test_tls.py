"""The federation CA, issued certificates, credential builders and the exposure check of fedn.tls.

Chains are checked with cryptography's RFC 5280 verifier (the same rules a strict TLS stack applies),
so a certificate that verifies here carries the extensions a peer needs (CA constraints, EKU, SANs).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from fedn import tls
from fedn.cli import main
from fedn.errors import Conflict, InvalidArgument


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    tls.create_ca(tmp_path / "ca")
    return tmp_path / "ca"


@pytest.fixture
def pair(ca_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    return tls.issue_certificate(ca_dir, "combiner-0", ["127.0.0.1", "localhost"], tmp_path / "certs")


def _verifier(ca_dir: Path, at: dt.datetime | None = None) -> PolicyBuilder:
    store = Store([_cert(ca_dir / "ca.pem")])
    return PolicyBuilder().store(store).time(at or dt.datetime.now(dt.UTC))


# ---------------------------------------------------------------- the CA


def test_create_ca_writes_a_self_signed_ca_and_a_private_key(tmp_path: Path):
    cert_path, key_path = tls.create_ca(tmp_path / "ca", common_name="test CA", days=30)

    cert = _cert(cert_path)
    assert cert.subject == cert.issuer
    cert.verify_directly_issued_by(cert)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days in (30, 29)
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert _mode(key_path) == 0o600
    assert sorted(p.name for p in cert_path.parent.iterdir()) == ["ca.key", "ca.pem"]  # no temp files left


@pytest.mark.parametrize("existing", ["ca.pem", "ca.key"])
def test_create_ca_refuses_to_overwrite_an_existing_ca(tmp_path: Path, existing: str):
    (tmp_path / existing).write_bytes(b"old")

    with pytest.raises(Conflict, match=f"{existing} exists"):
        tls.create_ca(tmp_path)

    assert (tmp_path / existing).read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing]


def test_create_ca_twice_keeps_the_first(ca_dir: Path):
    before = (ca_dir / "ca.key").read_bytes()

    with pytest.raises(Conflict):
        tls.create_ca(ca_dir)

    assert (ca_dir / "ca.key").read_bytes() == before


def test_a_ca_name_that_is_not_a_short_printable_line_is_refused(tmp_path: Path):
    for bad in ("", "x" * 65, "a\nb"):
        with pytest.raises(InvalidArgument, match=r"^--name"):
            tls.create_ca(tmp_path / "ca", common_name=bad)
    assert not (tmp_path / "ca").exists()


@pytest.mark.parametrize("days", [0, -1, 10**6])
def test_days_out_of_range_is_refused(tmp_path: Path, days: int):
    with pytest.raises(InvalidArgument, match="--days"):
        tls.create_ca(tmp_path / "ca", days=days)


# ---------------------------------------------------------------- issued certificates


def test_issued_certificate_verifies_as_server_for_each_host_and_as_client(ca_dir: Path, pair):
    cert_path, key_path = pair
    leaf = _cert(cert_path)

    for host in (x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")):
        _verifier(ca_dir).build_server_verifier(host).verify(leaf, [])
    verified = _verifier(ca_dir).build_client_verifier().verify(leaf, [])
    assert verified.subjects is not None
    assert leaf.subject.rfc4514_string() == "CN=combiner-0"
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "combiner-0"]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert _mode(key_path) == 0o600


def test_issued_certificate_does_not_verify_for_another_host_another_ca_or_after_expiry(ca_dir, pair, tmp_path):
    leaf = _cert(pair[0])
    tls.create_ca(tmp_path / "other")

    with pytest.raises(VerificationError):
        _verifier(ca_dir).build_server_verifier(x509.DNSName("evil.example.org")).verify(leaf, [])
    with pytest.raises(VerificationError):
        _verifier(tmp_path / "other").build_client_verifier().verify(leaf, [])
    after = leaf.not_valid_after_utc + dt.timedelta(days=1)
    with pytest.raises(VerificationError):
        _verifier(ca_dir, at=after).build_client_verifier().verify(leaf, [])


def test_validity_is_days_and_never_past_the_ca(tmp_path: Path):
    tls.create_ca(tmp_path / "ca", days=10)
    short, _ = tls.issue_certificate(tmp_path / "ca", "a", ["a.example.org"], tmp_path, days=3)
    capped, _ = tls.issue_certificate(tmp_path / "ca", "b", ["b.example.org"], tmp_path, days=825)

    assert (_cert(short).not_valid_after_utc - _cert(short).not_valid_before_utc).days in (3, 2)
    assert _cert(capped).not_valid_after_utc <= _cert(tmp_path / "ca" / "ca.pem").not_valid_after_utc


def test_a_name_that_is_not_a_dns_name_is_only_the_cn(ca_dir: Path, tmp_path: Path):
    cert_path, _ = tls.issue_certificate(ca_dir, "client_7.site_a", ["::1"], tmp_path)

    sans = _cert(cert_path).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(v.value) for v in sans] == ["::1"]
    assert _cert(cert_path).subject.rfc4514_string() == "CN=client_7.site_a"


def test_reissuing_replaces_the_pair(ca_dir: Path, pair, tmp_path: Path):
    old = pair[0].read_bytes()

    tls.issue_certificate(ca_dir, "combiner-0", ["127.0.0.1"], tmp_path / "certs")

    assert pair[0].read_bytes() != old
    assert _mode(pair[1]) == 0o600


@pytest.mark.parametrize(
    ("name", "hosts", "message"),
    [
        ("../etc", ["h"], "not a valid id"),
        ("combiner-0", ["bad host"], "--host 'bad host'"),
        ("combiner-0", ["-x.org"], "--host '-x.org'"),
        ("a_b", [], "needs at least one --host"),
        ("c" * 65, ["h"], "at most 64 characters"),
    ],
)
def test_bad_names_and_hosts_are_refused(ca_dir: Path, tmp_path: Path, name, hosts, message):
    with pytest.raises(InvalidArgument, match=message):
        tls.issue_certificate(ca_dir, name, hosts, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_ca_whose_key_does_not_match_is_refused(ca_dir: Path, tmp_path: Path):
    tls.create_ca(tmp_path / "other")
    (ca_dir / "ca.key").write_bytes((tmp_path / "other" / "ca.key").read_bytes())

    with pytest.raises(InvalidArgument, match=r"--ca .*ca.key is not the key of ca.pem"):
        tls.issue_certificate(ca_dir, "x", ["x"], tmp_path)


def test_a_missing_ca_names_the_flag(tmp_path: Path):
    with pytest.raises(InvalidArgument, match=r"^--ca .*ca.pem: cannot read it"):
        tls.issue_certificate(tmp_path / "nope", "x", ["x"], tmp_path)


# ---------------------------------------------------------------- credentials and bad files


def _garbage(tmp_path: Path) -> str:
    path = tmp_path / "garbage.pem"
    path.write_text("-----BEGIN NOTHING-----\nxyz\n")
    return str(path)


def test_good_files_give_credentials_and_contexts(ca_dir: Path, pair):
    cert, key, ca = str(pair[0]), str(pair[1]), str(ca_dir / "ca.pem")

    tls.server_credentials(cert, key)
    tls.server_credentials(cert, key, ca)
    tls.channel_credentials(ca)
    tls.channel_credentials(ca, cert, key)
    server = tls.server_ssl_context(cert, key, ca)
    client = tls.client_ssl_context(ca, cert, key)
    tls.TLSFiles(cert, key, ca, ca).check()

    assert server.verify_mode == ssl.CERT_REQUIRED
    assert server.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert client.check_hostname and client.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert tls.server_ssl_context(cert, key).verify_mode == ssl.CERT_NONE


@pytest.mark.parametrize(
    "build",
    [
        lambda c, k, ca, bad: tls.server_credentials(bad, k),
        lambda c, k, ca, bad: tls.server_ssl_context(bad, k),
        lambda c, k, ca, bad: tls.client_ssl_context(ca, bad, k),
        lambda c, k, ca, bad: tls.channel_credentials(ca, bad, k),
        lambda c, k, ca, bad: tls.TLSFiles(bad, k).check(),
    ],
)
@pytest.mark.parametrize("kind", ["missing", "garbage", "directory"])
def test_a_bad_certificate_names_tls_cert(ca_dir, pair, tmp_path, build, kind):
    bad = {"missing": str(tmp_path / "nope.pem"), "garbage": _garbage(tmp_path), "directory": str(tmp_path)}[kind]
    reason = "not a PEM certificate" if kind == "garbage" else "cannot read it"

    with pytest.raises(InvalidArgument, match=rf"^--tls-cert {bad}: {reason}"):
        build(str(pair[0]), str(pair[1]), str(ca_dir / "ca.pem"), bad)


@pytest.mark.parametrize(
    "build",
    [
        lambda c, k, ca, bad: tls.server_credentials(c, bad),
        lambda c, k, ca, bad: tls.server_ssl_context(c, bad),
        lambda c, k, ca, bad: tls.client_ssl_context(ca, c, bad),
        lambda c, k, ca, bad: tls.channel_credentials(None, c, bad),
        lambda c, k, ca, bad: tls.TLSFiles(c, bad).check(),
    ],
)
def test_a_bad_key_names_tls_key(ca_dir, pair, tmp_path, build):
    bad = _garbage(tmp_path)

    with pytest.raises(InvalidArgument, match=rf"^--tls-key {bad}: not a PEM private key"):
        build(str(pair[0]), str(pair[1]), str(ca_dir / "ca.pem"), bad)


def test_a_key_of_another_certificate_or_encrypted_is_refused(ca_dir, pair, tmp_path):
    _, other_key = tls.issue_certificate(ca_dir, "other", ["other"], tmp_path)
    key = serialization.load_pem_private_key(pair[1].read_bytes(), password=None)
    encrypted = tmp_path / "enc.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )

    with pytest.raises(InvalidArgument, match=r"^--tls-key .*other.key: not the key of the certificate"):
        tls.server_credentials(str(pair[0]), str(other_key))
    with pytest.raises(InvalidArgument, match=r"^--tls-key .*enc.key: the key is encrypted"):
        tls.server_ssl_context(str(pair[0]), str(encrypted))


@pytest.mark.parametrize(
    ("build", "flag"),
    [
        (lambda c, k, bad: tls.server_credentials(c, k, bad), "--client-ca"),
        (lambda c, k, bad: tls.server_ssl_context(c, k, bad), "--client-ca"),
        (lambda c, k, bad: tls.TLSFiles(c, k, client_ca_file=bad).check(), "--client-ca"),
        (lambda c, k, bad: tls.channel_credentials(bad), "--ca-file"),
        (lambda c, k, bad: tls.client_ssl_context(bad), "--ca-file"),
        (lambda c, k, bad: tls.TLSFiles(ca_file=bad).check(), "--ca-file"),
    ],
)
def test_a_bad_ca_file_names_its_flag(pair, tmp_path, build, flag):
    bad = _garbage(tmp_path)

    with pytest.raises(InvalidArgument, match=rf"^{flag} {bad}: not a PEM certificate"):
        build(str(pair[0]), str(pair[1]), bad)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"cert_file": "c.pem"}, "^--tls-cert needs --tls-key"),
        ({"key_file": "k.key"}, "^--tls-key needs --tls-cert"),
        ({"client_ca_file": "ca.pem"}, "^--client-ca needs --tls-cert and --tls-key"),
    ],
)
def test_tls_files_need_cert_and_key_together(files, message):
    with pytest.raises(InvalidArgument, match=message):
        tls.TLSFiles(**files).check()


def test_tls_files_with_nothing_given_is_fine():
    files = tls.TLSFiles()

    files.check()

    assert not files.has_identity


# ---------------------------------------------------------------- peers and exposure


@pytest.mark.parametrize(
    ("auth_context", "expected"),
    [
        ({}, None),
        ({"x509_common_name": []}, None),
        ({"transport_security_type": [b"ssl"], "x509_common_name": [b"client-1"]}, "client-1"),
        ({"x509_common_name": [b"../x"]}, None),
        ({"x509_common_name": [b"a\nb"]}, None),
        ({"x509_common_name": [b".."]}, None),
    ],
)
def test_peer_common_name(auth_context, expected):
    assert tls.peer_common_name(auth_context) == expected


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("::", False),
        ("[::]", False),
        ("", False),
        ("10.0.0.5", False),
        ("reducer.example.org", False),
        ("localhost.example.org", False),
        ("128.0.0.1", False),
    ],
)
def test_is_loopback(host, expected):
    assert tls.is_loopback(host) is expected


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0", "10.0.0.5", ""])
@pytest.mark.parametrize("tls_on", [False, True])
@pytest.mark.parametrize("auth", [False, True])
@pytest.mark.parametrize("insecure", [False, True])
def test_check_exposure_matrix(host, tls_on, auth, insecure, caplog):
    exposed = not tls.is_loopback(host) and not (tls_on and auth)
    caplog.set_level(logging.DEBUG, logger="fedn.tls")

    if exposed and not insecure:
        with pytest.raises(InvalidArgument) as exc:
            tls.check_exposure(host, tls=tls_on, auth=auth, insecure=insecure, service="combiner")
        assert exc.value.message.startswith("combiner: refusing to listen on")
        assert "--tls-cert/--tls-key" in exc.value.message and "--insecure" in exc.value.message
        assert ("TLS" in exc.value.message) is not tls_on
        assert ("token auth" in exc.value.message) is not auth
    else:
        tls.check_exposure(host, tls=tls_on, auth=auth, insecure=insecure, service="combiner")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == (1 if exposed and insecure else 0)


# ---------------------------------------------------------------- the CLI


def test_cli_creates_issues_and_shows(tmp_path: Path, capsys):
    assert main(["certs", "ca", "--out", str(tmp_path / "ca"), "--days", "30", "--name", "site CA"]) == 0
    argv = ["certs", "issue", "reducer", "--ca", str(tmp_path / "ca"), "--host", "10.0.0.5", "--out", str(tmp_path)]
    assert main(argv) == 0
    capsys.readouterr()

    assert main(["certs", "show", str(tmp_path / "reducer.pem")]) == 0

    out = capsys.readouterr().out
    fingerprint = _cert(tmp_path / "reducer.pem").fingerprint(hashes.SHA256()).hex(":")
    assert f"sha256:      {fingerprint}" in out
    assert "SANs:        IP:10.0.0.5, DNS:reducer" in out
    assert "issuer:      CN=site CA" in out
    assert "key usage:   serverAuth, clientAuth" in out


def test_cli_errors_are_one_line_and_exit_2(ca_dir: Path, capsys):
    assert main(["certs", "ca", "--out", str(ca_dir)]) == 2
    assert main(["certs", "show", str(ca_dir / "ca.key")]) == 2

    err = capsys.readouterr().err.splitlines()
    assert f"error: --out {ca_dir}: ca.pem exists; refusing to overwrite a CA (move it away first)" in err
    assert f"error: FILE {ca_dir / 'ca.key'}: not a PEM certificate" in err
