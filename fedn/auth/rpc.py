"""Authentication on gRPC: one server interceptor, and channels that present a token.

The interceptor checks every call before its handler runs: the bearer token in the ``authorization``
metadata, the role the method needs (:data:`fedn.auth.policy.GRPC_RULES`), and, under mutual TLS,
that a client's or combiner's certificate names the token's subject. The verified caller is put in a
context variable that the servicer reads with :func:`current_principal` to bind request ids to it.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from fedn.auth.policy import grpc_roles
from fedn.auth.tokens import Principal, Role, TokenVerifier, bearer_token
from fedn.errors import FednError, PermissionDenied

__all__ = ["AuthInterceptor", "TokenSource", "current_principal", "open_aio_channel", "open_channel"]

logger = logging.getLogger(__name__)

_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("fedn_principal", default=None)
TokenSource = str | Callable[[], str] | None
"""A token, or a function giving the current one (the reducer renews its own), or None for none."""
_BOUND_ROLES = (Role.CLIENT, Role.COMBINER)  # roles whose certificate must name their subject


def current_principal() -> Principal | None:
    """The caller of the RPC being served, or None when authentication is off."""
    return _principal.get()


OnDenied = Callable[[str, str, str, FednError], None]
"""Called as ``on_denied(method, peer, subject, error)`` for each refused call (the audit log)."""


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates every call; ``verifier=None`` turns authentication off (loopback only)."""

    def __init__(
        self,
        verifier: TokenVerifier | None,
        *,
        on_denied: OnDenied | None = None,
        check_certificate_name: bool = True,
    ) -> None:
        self._verifier = verifier
        self._on_denied = on_denied
        self._check_cert = check_certificate_name

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        roles = grpc_roles(method)
        authenticate = self._authenticator(method, roles)
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=_answering(handler.unary_unary, authenticate))
        if handler.stream_unary is not None:
            return handler._replace(stream_unary=_answering(handler.stream_unary, authenticate))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=_streaming(handler.unary_stream, authenticate))
        return handler._replace(stream_stream=_streaming(handler.stream_stream, authenticate))

    def _authenticator(self, method: str, roles):
        async def authenticate(context: grpc.aio.ServicerContext) -> Principal | None:
            try:
                return self._check(method, roles, context)
            except FednError as exc:
                peer = context.peer() or ""
                logger.warning("refused %s from %s: %s", method, peer, exc.message)
                if self._on_denied is not None:
                    self._on_denied(method, peer, "", exc)
                await context.abort(exc.grpc_status, exc.message)
                raise AssertionError("unreachable: abort raises") from exc

        return authenticate

    def _check(self, method: str, roles, context: grpc.aio.ServicerContext) -> Principal | None:
        if roles is None:
            raise PermissionDenied(f"{method} is not an allowed method")
        if self._verifier is None:
            return None
        header = next((v for k, v in context.invocation_metadata() or () if k == "authorization"), None)
        principal = self._verifier.verify(bearer_token(header if isinstance(header, str) else None))
        if principal.role not in roles:
            allowed = ", ".join(sorted(r.value for r in roles))
            raise PermissionDenied(f"{method.rsplit('/', 1)[-1]} needs the role {allowed}, not {principal.role}")
        if self._check_cert and principal.role in _BOUND_ROLES:
            names = (context.auth_context() or {}).get("x509_common_name") or ()
            if names and principal.subject not in {n.decode(errors="replace") for n in names}:
                raise PermissionDenied(
                    f"the certificate names {names[0].decode(errors='replace')!r}, the token {principal.subject!r}"
                )
        return principal


def _answering(inner, authenticate):
    """A handler with one answer (unary or client-streaming) that runs once its caller is checked."""

    async def handler(request, context):
        _principal.set(await authenticate(context))
        return await inner(request, context)

    return handler


def _streaming(inner, authenticate):
    """A server-streaming handler that starts once its caller is checked."""

    async def handler(request, context):
        _principal.set(await authenticate(context))
        async for message in inner(request, context):
            yield message

    return handler


def _token_metadata(token: TokenSource) -> list[tuple[str, str]]:
    if token is None:
        return []
    value = token() if callable(token) else token
    return [("authorization", f"Bearer {value}")] if value else []


def _with_token(details: Any, token: TokenSource) -> Any:
    extra = _token_metadata(token)
    if not extra:
        return details
    return details._replace(metadata=[*(details.metadata or ()), *extra])


class _Details(grpc.ClientCallDetails):  # the sync API's details are not a namedtuple
    def __init__(self, details: grpc.ClientCallDetails, metadata: list) -> None:
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = metadata
        self.credentials = details.credentials
        self.wait_for_ready = getattr(details, "wait_for_ready", None)
        self.compression = getattr(details, "compression", None)


class _SyncTokenInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    def __init__(self, token: TokenSource) -> None:
        self._token = token

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _Details(details, [*(details.metadata or ()), *_token_metadata(self._token)])

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)


def _aio_interceptors(token: TokenSource) -> list:
    class UU(grpc.aio.UnaryUnaryClientInterceptor):
        async def intercept_unary_unary(self, continuation, details, request):
            return await continuation(_with_token(details, token), request)

    class US(grpc.aio.UnaryStreamClientInterceptor):
        async def intercept_unary_stream(self, continuation, details, request):
            return await continuation(_with_token(details, token), request)

    class SU(grpc.aio.StreamUnaryClientInterceptor):
        async def intercept_stream_unary(self, continuation, details, request_iterator):
            return await continuation(_with_token(details, token), request_iterator)

    class SS(grpc.aio.StreamStreamClientInterceptor):
        async def intercept_stream_stream(self, continuation, details, request_iterator):
            return await continuation(_with_token(details, token), request_iterator)

    return [UU(), US(), SU(), SS()]


def _credentials(tls: Any) -> grpc.ChannelCredentials | None:
    """TLS when a CA is named (the peer's certificate must chain to it); plaintext otherwise."""
    if tls is None or not tls.ca_file:
        return None
    from fedn.tls import channel_credentials

    return channel_credentials(tls.ca_file, tls.cert_file, tls.key_file)


def open_channel(
    address: str, *, tls: Any = None, token: TokenSource = None, options: Sequence[tuple[str, Any]] = ()
) -> grpc.Channel:
    """A channel to ``address``: TLS when ``tls`` (a :class:`fedn.tls.TLSFiles`) names a CA (with its
    certificate and key for mutual TLS), and the token in every call's metadata."""
    creds = _credentials(tls)
    options = list(options)
    channel = grpc.secure_channel(address, creds, options) if creds else grpc.insecure_channel(address, options)
    return grpc.intercept_channel(channel, _SyncTokenInterceptor(token)) if token is not None else channel


def open_aio_channel(
    address: str, *, tls: Any = None, token: TokenSource = None, options: Sequence[tuple[str, Any]] = ()
) -> grpc.aio.Channel:
    """The asyncio twin of :func:`open_channel`."""
    creds = _credentials(tls)
    interceptors = _aio_interceptors(token) if token is not None else None
    options = list(options)
    if creds:
        return grpc.aio.secure_channel(address, creds, options, interceptors=interceptors)
    return grpc.aio.insecure_channel(address, options, interceptors=interceptors)
