"""Errors the HTTP server answers itself, before Flask sees the request, in the API's JSON shape.

A malformed request line, oversized headers, an unsupported transfer encoding, a body over its bound,
a client too slow to send its request, and a connection over the server's limit are refused by
:mod:`reducer.http_server`, not the app. Clients of the API read every error as ``{"error", "detail"}``
(see ``reducer.api.register_error_handlers``), so these are answered in that shape too.
"""

from __future__ import annotations

import json
from http import HTTPStatus

__all__ = ["HttpError", "error_body", "error_response"]


class HttpError(Exception):
    """A request the server layer refuses with ``status``; the connection is closed after the answer
    (the rest of the request may still be on its way, so the stream cannot be trusted to resume)."""

    def __init__(self, status: int, detail: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def error_body(status: int, detail: str) -> bytes:
    """The JSON document of an error answered by the server layer."""
    return json.dumps({"error": _phrase(status).lower(), "detail": detail}).encode()


def error_response(exc: HttpError) -> bytes:
    """The whole HTTP/1.1 answer to ``exc``, written as is: it may come before any request was parsed
    (a connection over the limit), where no HTTP state machine would allow an answer."""
    body = error_body(exc.status, exc.detail)
    head = [
        f"HTTP/1.1 {exc.status} {_phrase(exc.status)}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in exc.headers),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
