"""The WSGI side of :mod:`reducer.http_server`: the ``environ`` of a request h11 parsed, and the app's call
on a worker thread (PEP 3333)."""

from __future__ import annotations

import asyncio
import ssl
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

import h11

__all__ = ["ASYNC_BODY", "PEER_CERT", "call_app", "close_answer", "pull_chunks", "wsgi_environ"]

_FIRST_BYTES = 1 << 16
_END = object()

PEER_CERT = "fedn.peer_cert"
"""``environ`` key of the client's verified certificate (``SSLSocket.getpeercert()``), None without mTLS."""

ASYNC_BODY = "fedn.async_body"
"""``environ`` key where the app may leave an async iterator of bytes (with ``aclose()``): the server sends
it on its event loop after the app's own (empty) body, so a long-lived stream holds no worker thread."""


def wsgi_environ(
    request: h11.Request,
    *,
    server: tuple[str, int, str],
    peer: tuple | None,
    ssl_object: ssl.SSLObject | None,
) -> dict[str, Any]:
    """The ``environ`` of ``request`` (without ``wsgi.input``); ``server`` is (host, port, scheme). A header
    whose name holds ``_`` is dropped: ``X_Token`` would pose as ``X-Token``, as nginx and gunicorn know."""
    target = bytes(request.target)
    if not target.startswith(b"/"):  # absolute form, or "*"
        parts = urlsplit(target)
        target = (parts.path or b"/") + (b"?" + parts.query if parts.query else b"")
    path, _, query = target.partition(b"?")
    peer = peer or ("", 0)
    host, port, scheme = server
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method.decode("ascii"),
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
        "QUERY_STRING": query.decode("latin-1"),
        "SERVER_NAME": host,
        "SERVER_PORT": str(port),
        "SERVER_PROTOCOL": f"HTTP/{request.http_version.decode('ascii')}",
        "REMOTE_ADDR": str(peer[0]),
        "REMOTE_PORT": str(peer[1]),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scheme,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
        PEER_CERT: ssl_object.getpeercert() if ssl_object is not None else None,
    }
    for raw_name, raw_value in request.headers:
        name = raw_name.decode("latin-1")
        if "_" in name:  # X_Token would pose as X-Token in environ; dropped, as nginx and gunicorn do
            continue
        key, value = name.upper().replace("-", "_"), raw_value.decode("latin-1")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = f"HTTP_{key}"
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


def call_app(app: Callable[..., Any], environ: dict) -> tuple[str, list, list[bytes], Any, Any]:
    """Call the app on a worker thread and pull its answer up to :data:`_FIRST_BYTES`, so a small one
    needs one thread hop; returns the status, headers, first chunks, and the rest and the result to
    close (both None when the answer is complete, the result closed already)."""
    started: dict[str, Any] = {}
    first: list[bytes] = []

    def start_response(status: str, headers: list, exc_info: Any = None) -> Callable[[bytes], None]:
        started["status"], started["headers"] = status, headers
        return first.append

    result = app(environ, start_response)
    try:
        iterator: Any = iter(result)
        pulled = 0
        for chunk in iterator:
            if chunk:
                first.append(chunk)
                pulled += len(chunk)
                if pulled >= _FIRST_BYTES:
                    break
        else:
            iterator = None
        if "status" not in started:
            raise RuntimeError("the WSGI app returned without calling start_response")
    except BaseException:
        iterator = None
        raise
    finally:
        if iterator is None and hasattr(result, "close"):
            result.close()
    return started["status"], started["headers"], first, iterator, None if iterator is None else result


async def pull_chunks(
    loop: asyncio.AbstractEventLoop, pool: Executor | None, iterator: Iterator[bytes]
) -> AsyncIterator[bytes]:
    """The rest of a WSGI answer, each chunk pulled on a worker thread (the app may block producing it)."""
    while (chunk := await loop.run_in_executor(pool, next, iterator, _END)) is not _END:
        yield chunk


async def close_answer(loop: asyncio.AbstractEventLoop, pool: Executor | None, result: Any, environ: dict) -> None:
    """Close what the app handed out for one answer: its :data:`ASYNC_BODY` (even unsent) and its result."""
    if (stream := environ.get(ASYNC_BODY)) is not None:
        await stream.aclose()
    if (close := getattr(result, "close", None)) is not None:
        await loop.run_in_executor(pool, close)
