"""Real TLS handshakes on 127.0.0.1 with certificates made by fedn.tls: gRPC (grpc.aio) and HTTPS.

Plaintext and untrusted peers must fail the handshake; a peer trusting the federation CA works; with
a client CA (mutual TLS) only a certificate from that CA gets in, and its CN is the peer's identity.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import httpx
import pytest

from fedn import tls

CALL_TIMEOUT_S = 5.0
_METHOD = "/fedn.test.Probe/Whoami"
# A fresh subchannel per channel: a pooled TLS connection must not carry over between cases.
_CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]


@dataclass(frozen=True)
class Pki:
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    other_ca: str
    rogue_cert: str
    rogue_key: str


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca, _ = tls.create_ca(root / "ca")
    other_ca, _ = tls.create_ca(root / "other-ca", common_name="someone else's CA")
    server = tls.issue_certificate(root / "ca", "combiner-0", ["127.0.0.1", "localhost"], root / "certs")
    client = tls.issue_certificate(root / "ca", "client-7", [], root / "certs")
    # same name, wrong CA: an impostor's certificate
    rogue = tls.issue_certificate(root / "other-ca", "client-7", [], root / "rogue")
    return Pki(str(ca), *map(str, server), *map(str, client), str(other_ca), *map(str, rogue))


# ---------------------------------------------------------------- gRPC


async def _whoami(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return (tls.peer_common_name(context.auth_context()) or "-").encode()


@asynccontextmanager
async def _grpc_server(credentials: grpc.ServerCredentials):
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(_whoami)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("fedn.test.Probe", {"Whoami": handler})])
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(grace=None)


async def _call(channel: grpc.aio.Channel) -> str:
    async with channel:
        reply = await channel.unary_unary(_METHOD)(b"", timeout=CALL_TIMEOUT_S, wait_for_ready=False)
        return reply.decode()


def _run(server_credentials: grpc.ServerCredentials, make_channel) -> str:
    """The Whoami reply over a channel ``make_channel(address)`` makes; raises the call's AioRpcError."""

    async def scenario() -> str:
        async with _grpc_server(server_credentials) as address:
            return await _call(make_channel(address))

    return asyncio.run(asyncio.wait_for(scenario(), timeout=4 * CALL_TIMEOUT_S))


def _secure(credentials: grpc.ChannelCredentials):
    return lambda address: grpc.aio.secure_channel(address, credentials, options=_CHANNEL_OPTIONS)


def _refused(server_credentials: grpc.ServerCredentials, make_channel) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        _run(server_credentials, make_channel)
    return exc.value.code()


def test_grpc_plaintext_channel_fails_against_tls(pki: Pki):
    creds = tls.server_credentials(pki.server_cert, pki.server_key)

    code = _refused(creds, lambda address: grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS))

    assert code == grpc.StatusCode.UNAVAILABLE


def test_grpc_channel_trusting_the_ca_works_and_names_no_peer_without_mtls(pki: Pki):
    creds = tls.server_credentials(pki.server_cert, pki.server_key)

    # a client certificate offered to a server without a client CA is neither asked for nor trusted
    assert _run(creds, _secure(tls.channel_credentials(pki.ca))) == "-"
    assert _run(creds, _secure(tls.channel_credentials(pki.ca, pki.client_cert, pki.client_key))) == "-"


def test_grpc_channel_trusting_another_ca_fails(pki: Pki):
    creds = tls.server_credentials(pki.server_cert, pki.server_key)

    assert _refused(creds, _secure(tls.channel_credentials(pki.other_ca))) == grpc.StatusCode.UNAVAILABLE


def test_grpc_mtls_refuses_a_client_without_a_certificate(pki: Pki):
    creds = tls.server_credentials(pki.server_cert, pki.server_key, pki.ca)

    assert _refused(creds, _secure(tls.channel_credentials(pki.ca))) == grpc.StatusCode.UNAVAILABLE


def test_grpc_mtls_refuses_a_certificate_from_an_unknown_ca(pki: Pki):
    creds = tls.server_credentials(pki.server_cert, pki.server_key, pki.ca)
    channel = tls.channel_credentials(pki.ca, pki.rogue_cert, pki.rogue_key)

    assert _refused(creds, _secure(channel)) == grpc.StatusCode.UNAVAILABLE


def test_grpc_mtls_accepts_the_federation_certificate_and_names_its_peer(pki: Pki):
    creds = tls.server_credentials(pki.server_cert, pki.server_key, pki.ca)
    channel = tls.channel_credentials(pki.ca, pki.client_cert, pki.client_key)

    assert _run(creds, _secure(channel)) == "client-7"


# ---------------------------------------------------------------- HTTPS


class _WhoamiHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        cert = self.connection.getpeercert() or {}
        names = [value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"]
        body = (names[0] if names else "-").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass


@contextmanager
def _https_server(context) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _WhoamiHandler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.socket.settimeout(CALL_TIMEOUT_S)  # a stalled handshake cannot hold the accept loop
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(CALL_TIMEOUT_S)
        assert not thread.is_alive()


def _get(url: str, verify) -> str:
    with httpx.Client(verify=verify, timeout=CALL_TIMEOUT_S) as client:
        response = client.get(url)
        response.raise_for_status()
        return response.text


def test_https_trusting_the_ca_works(pki: Pki):
    with _https_server(tls.server_ssl_context(pki.server_cert, pki.server_key)) as url:
        assert _get(url, tls.client_ssl_context(pki.ca)) == "-"


def test_https_untrusted_server_fails(pki: Pki):
    with (
        _https_server(tls.server_ssl_context(pki.server_cert, pki.server_key)) as url,
        pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        _get(url, tls.client_ssl_context(pki.other_ca))


def test_https_plaintext_fails_against_tls(pki: Pki):
    with (
        _https_server(tls.server_ssl_context(pki.server_cert, pki.server_key)) as url,
        pytest.raises(httpx.TransportError),
    ):
        _get(url.replace("https://", "http://"), None)


def test_https_mtls_refuses_a_client_without_a_certificate(pki: Pki):
    with (
        _https_server(tls.server_ssl_context(pki.server_cert, pki.server_key, pki.ca)) as url,
        pytest.raises(httpx.TransportError),
    ):
        _get(url, tls.client_ssl_context(pki.ca))


def test_https_mtls_refuses_a_certificate_from_an_unknown_ca(pki: Pki):
    with (
        _https_server(tls.server_ssl_context(pki.server_cert, pki.server_key, pki.ca)) as url,
        pytest.raises(httpx.TransportError),
    ):
        _get(url, tls.client_ssl_context(pki.ca, pki.rogue_cert, pki.rogue_key))


def test_https_mtls_accepts_the_federation_certificate(pki: Pki):
    with _https_server(tls.server_ssl_context(pki.server_cert, pki.server_key, pki.ca)) as url:
        assert _get(url, tls.client_ssl_context(pki.ca, pki.client_cert, pki.client_key)) == "client-7"
