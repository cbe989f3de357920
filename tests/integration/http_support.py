"""Shared by the reducer HTTP server tests: a reducer on a free port, a WSGI app that echoes what the
server handed it, and raw-socket requests for answers no HTTP client would provoke."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path

from reducer.http_server import PEER_CERT, HttpServer
from reducer.server import ReducerServer
from reducer.settings import ReducerSettings

GENEROUS_S = 10.0  # a bound on "answers at once", never a benchmark


@contextlib.contextmanager
def reducer(tmp_path: Path, **overrides) -> Iterator[ReducerServer]:
    settings = ReducerSettings(
        host="127.0.0.1",
        port=0,
        state=f"sqlite:///{tmp_path / 'state.db'}",
        models=(tmp_path / "models").as_uri(),
        gc_interval_s=0,
        **overrides,
    )
    server = ReducerServer(settings)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def echo_app(environ, start_response):
    """A WSGI app that tells what the server handed it."""
    cert = environ[PEER_CERT]
    subject = dict(pair[0] for pair in cert["subject"]) if cert else None
    body = json.dumps(
        {
            "cn": subject and subject.get("commonName"),
            "scheme": environ["wsgi.url_scheme"],
            "token": environ.get("HTTP_X_TOKEN"),
            "length": len(environ["wsgi.input"].read()),
        }
    ).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


@contextlib.contextmanager
def echo_server(**kwargs) -> Iterator[HttpServer]:
    server = HttpServer(echo_app, "127.0.0.1", 0, threads=2, **kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def read_reply(conn: socket.socket) -> tuple[int, bytes, bytes]:
    """Status, lower-cased head and body of one answer on ``conn`` (read to Content-Length or EOF)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")), None
    )
    while length is not None and len(body) < length and (chunk := conn.recv(65536)):
        body += chunk
    return int(head.split(b" ", 2)[1]), head.lower(), body


def raw_request(port: int, data: bytes) -> tuple[int, bytes, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=GENEROUS_S) as conn:
        conn.sendall(data)
        return read_reply(conn)


def json_error(status: int, head: bytes, body: bytes, expected: int) -> dict:
    assert status == expected, (head[:200], body[:300])
    assert b"content-type: application/json" in head, head[:300]
    document = json.loads(body)
    assert set(document) == {"error", "detail"}, document
    return document
