"""The reducer's REST API over TLS (issue 15): a trusted CA works, plaintext and an unknown CA fail, mutual
TLS refuses a client without a certificate from the client CA, and the app sees who the client is."""

from __future__ import annotations

import socket
import ssl

import httpx
import pytest

from fedn.errors import InvalidArgument
from fedn.tls import client_ssl_context, create_ca, issue_certificate, server_ssl_context
from reducer.http_server import HttpLimits
from tests.integration.http_support import GENEROUS_S, echo_server, reducer


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, str]:
    """A federation CA with a server and a client certificate, and a second CA nobody trusts."""
    root = tmp_path_factory.mktemp("pki")
    ca_cert, _ = create_ca(root / "ca")
    server_cert, server_key = issue_certificate(root / "ca", "reducer", ["127.0.0.1"], root / "certs")
    client_cert, client_key = issue_certificate(root / "ca", "client-7", ["127.0.0.1"], root / "certs")
    other_ca, _ = create_ca(root / "other")
    stranger_cert, stranger_key = issue_certificate(root / "other", "stranger", ["127.0.0.1"], root / "other-certs")
    return {
        "ca": str(ca_cert),
        "cert": str(server_cert),
        "key": str(server_key),
        "client_cert": str(client_cert),
        "client_key": str(client_key),
        "other_ca": str(other_ca),
        "stranger_cert": str(stranger_cert),
        "stranger_key": str(stranger_key),
    }


def test_https_with_a_trusted_ca_and_refused_in_plaintext_or_by_an_untrusted_one(tmp_path, pki):
    with reducer(tmp_path, tls_cert=pki["cert"], tls_key=pki["key"]) as server:
        assert server.url.startswith("https://127.0.0.1:")
        health = httpx.get(f"{server.url}/api/v1/health", verify=client_ssl_context(pki["ca"]), timeout=GENEROUS_S)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{server.port}/api/v1/health", timeout=GENEROUS_S)
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{server.url}/api/v1/health", verify=client_ssl_context(pki["other_ca"]), timeout=GENEROUS_S)


def test_mutual_tls_refuses_a_client_without_a_certificate_or_with_a_stranger_one(tmp_path, pki):
    with reducer(tmp_path, tls_cert=pki["cert"], tls_key=pki["key"], client_ca=pki["ca"]) as server:
        url = f"{server.url}/api/v1/health"
        with pytest.raises(httpx.TransportError):
            httpx.get(url, verify=client_ssl_context(pki["ca"]), timeout=GENEROUS_S)
        stranger = client_ssl_context(pki["ca"], pki["stranger_cert"], pki["stranger_key"])
        with pytest.raises(httpx.TransportError):
            httpx.get(url, verify=stranger, timeout=GENEROUS_S)
        member = client_ssl_context(pki["ca"], pki["client_cert"], pki["client_key"])
        assert httpx.get(url, verify=member, timeout=GENEROUS_S).status_code == 200


def test_the_app_sees_the_verified_client_certificate_and_no_underscore_headers(pki):
    context = server_ssl_context(pki["cert"], pki["key"], pki["ca"])
    with echo_server(ssl_context=context) as server:
        member = client_ssl_context(pki["ca"], pki["client_cert"], pki["client_key"])
        url = f"https://127.0.0.1:{server.port}/"
        seen = httpx.get(url, verify=member, headers={"X_Token": "forged"}, timeout=GENEROUS_S).json()
        assert seen == {"cn": "client-7", "scheme": "https", "token": None, "length": 0}
        seen = httpx.get(url, verify=member, headers={"X-Token": "real"}, timeout=GENEROUS_S).json()
        assert seen["token"] == "real"


def test_a_client_ca_without_a_certificate_is_refused_at_start(tmp_path, pki):
    with pytest.raises(InvalidArgument, match="client-ca"), reducer(tmp_path, client_ca=pki["ca"]):
        pass


def test_an_ssl_handshake_that_never_comes_is_cut(pki):
    context = server_ssl_context(pki["cert"], pki["key"])
    with echo_server(ssl_context=context, limits=HttpLimits(read_timeout_s=0.5)) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=GENEROUS_S) as silent:
            assert silent.recv(1) == b""  # the handshake timeout closed it
        verify = ssl.create_default_context(cafile=pki["ca"])
        assert httpx.get(f"https://127.0.0.1:{server.port}/", verify=verify, timeout=GENEROUS_S).status_code == 200
