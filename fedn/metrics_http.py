"""A small HTTP endpoint that serves one metrics registry, for services without an HTTP server (combiners).

It runs on the service's own asyncio loop, so scraping reads the service's state from the thread that
changes it. One request per connection, ``GET /metrics`` only; the request head is bounded in size and
time and the connections in number, so a stranger cannot hold it. With a token verifier, the caller
must bring ``Authorization: Bearer TOKEN`` of an admin or a viewer (401 without a valid token, 403 for
another role); with an ``ssl.SSLContext`` it serves HTTPS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from fedn.auth.tokens import Role, TokenVerifier, bearer_token
from fedn.errors import FednError
from fedn.metrics import CONTENT_TYPE_LATEST, exposition

__all__ = ["MetricsEndpoint"]

logger = logging.getLogger(__name__)

_MAX_HEAD_BYTES = 16 * 1024
_HEAD_TIMEOUT_S = 5.0
_MAX_CONNECTIONS = 16
_ROLES = frozenset({Role.ADMIN, Role.VIEWER})
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
}


class MetricsEndpoint:
    """Serves ``registry`` at ``http(s)://host:port/metrics``; ``port`` 0 picks a free one (see :attr:`port`)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        verifier: TokenVerifier | None = None,
        on_denied: Callable[[str, FednError], None] | None = None,
    ) -> None:
        self._registry = registry
        self._host = host
        self._requested_port = port
        self._ssl = ssl_context
        self._verifier = verifier
        self._on_denied = on_denied
        self._server: asyncio.Server | None = None
        self._open = 0
        self.port = 0

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(
                self._serve, self._host, self._requested_port, ssl=self._ssl, limit=_MAX_HEAD_BYTES
            )
        except OSError as exc:
            raise FednError(f"cannot bind the metrics endpoint on {self._host}:{self._requested_port}: {exc}") from exc
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info(
            "metrics on %s://%s:%d/metrics (%s)",
            "https" if self._ssl else "http",
            self._host,
            self.port,
            "tokens required" if self._verifier else "no tokens",
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= _MAX_CONNECTIONS:
            writer.close()
            return
        self._open += 1
        try:
            status, body, content_type, head_only = await self._answer(reader, writer)
            reason = _REASONS.get(status, "")
            head = (
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n"
            )
            if status == 401:
                head += 'WWW-Authenticate: Bearer realm="fedn"\r\n'
            writer.write(head.encode("latin-1") + b"\r\n" + (b"" if head_only else body))
            await asyncio.wait_for(writer.drain(), _HEAD_TIMEOUT_S)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ssl.SSLError):
            pass  # the peer went away, was too slow or sent too much: nothing to answer
        finally:
            self._open -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[int, bytes, str, bool]:
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _HEAD_TIMEOUT_S)
        lines = raw.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            return _text(400, "bad request line")
        method, target, _ = parts
        head_only = method == "HEAD"
        if target.split("?", 1)[0] != "/metrics":
            return (*_text(404, "only /metrics is served here")[:3], head_only)
        if method not in ("GET", "HEAD"):
            return (*_text(405, "only GET /metrics")[:3], head_only)
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if self._verifier is not None:
            peer = writer.get_extra_info("peername")
            try:
                principal = self._verifier.verify(bearer_token(headers.get("authorization")))
            except FednError as exc:
                self._denied(peer, exc)
                return (*_text(401, exc.message)[:3], head_only)
            if principal.role not in _ROLES:
                message = f"GET /metrics needs the role admin or viewer, not {principal.role}"
                self._denied(peer, FednError(message))
                return (*_text(403, message)[:3], head_only)
        return 200, exposition(self._registry), CONTENT_TYPE_LATEST, head_only

    def _denied(self, peer: object, error: FednError) -> None:
        logger.warning("metrics: refused a scrape from %s: %s", peer, error.message)
        if self._on_denied is not None:
            self._on_denied(str(peer), error)


def _text(status: int, message: str) -> tuple[int, bytes, str, bool]:
    return status, f"{message}\n".encode(), "text/plain; charset=utf-8", False
