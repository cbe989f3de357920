"""The reducer's HTTP server (issue 15): connection and body limits, streamed uploads, and JSON for every
error the server layer answers itself (TLS: test_reducer_tls.py). Loopback only; every server and socket
a test opens is closed."""

from __future__ import annotations

import contextlib
import socket
import time
import tracemalloc

import httpx
import numpy as np
import pytest

from fedn.codec import encode_model, encode_model_chunks
from fedn.errors import ChecksumMismatch, FednError
from reducer.http_server import HttpLimits, HttpServer
from tests.integration.http_support import (
    GENEROUS_S,
    echo_app,
    echo_server,
    json_error,
    raw_request,
    read_reply,
    reducer,
)

# exhaustion


def test_slow_bodies_on_many_connections_leave_health_answering(tmp_path):
    """Issue 15: 150 connections that announce a 1 MB body and send 4 bytes blocked every new one."""
    with reducer(tmp_path) as server, contextlib.ExitStack() as stack:
        head = (
            b"POST /api/v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000000\r\n\r\n{"ro'
        )
        for _ in range(150):
            conn = stack.enter_context(socket.create_connection(("127.0.0.1", server.port), timeout=GENEROUS_S))
            conn.sendall(head)
        started = time.monotonic()
        health = httpx.get(f"{server.url}/api/v1/health", timeout=GENEROUS_S)
        assert health.status_code == 200
        assert time.monotonic() - started < GENEROUS_S


def test_idle_sockets_held_open_do_not_starve_a_heartbeat(tmp_path):
    with reducer(tmp_path) as server, contextlib.ExitStack() as stack:
        api = f"{server.url}/api/v1"
        assert httpx.post(f"{api}/combiners", json={"id": "c1", "address": "127.0.0.1:5"}).status_code == 200
        for _ in range(300):
            stack.enter_context(socket.create_connection(("127.0.0.1", server.port), timeout=GENEROUS_S))
        beat = httpx.put(f"{api}/combiners/c1/heartbeat", json={"client_ids": []}, timeout=GENEROUS_S)
        assert beat.status_code == 200, beat.text


def test_a_connection_over_the_limit_is_answered_503_json(tmp_path):
    with reducer(tmp_path, max_connections=2) as server, contextlib.ExitStack() as stack:
        for _ in range(2):
            stack.enter_context(socket.create_connection(("127.0.0.1", server.port), timeout=GENEROUS_S))
        status, head, body = raw_request(server.port, b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert "limit of 2 connections" in json_error(status, head, body, 503)["detail"]
        stack.close()
        deadline = time.monotonic() + GENEROUS_S  # the server notices the closed sockets on its own time
        while (reply := raw_request(server.port, b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n"))[0] == 503:
            assert time.monotonic() < deadline, reply


def test_a_head_or_body_that_stalls_is_cut_with_408_json(tmp_path):
    with reducer(tmp_path, read_timeout_s=0.5) as server:
        status, head, body = raw_request(server.port, b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Partial")
        json_error(status, head, body, 408)
        stalled = b"POST /api/v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100"
        stalled += b"\r\n\r\n{"
        status, head, body = raw_request(server.port, stalled)
        assert "request body" in json_error(status, head, body, 408)["detail"]
        assert httpx.get(f"{server.url}/api/v1/sessions", timeout=GENEROUS_S).json()["count"] == 0


def test_a_trickling_body_below_the_minimum_rate_is_cut(tmp_path):
    with reducer(tmp_path, read_timeout_s=0.3, min_body_rate=1 << 20) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=GENEROUS_S) as conn:
            conn.sendall(b"PUT /api/v1/combiners/c/heartbeat HTTP/1.1\r\nHost: x\r\nContent-Length: 10000\r\n\r\n")
            for _ in range(40):  # a byte every 0.1 s never waits read_timeout_s, but averages 10 bytes/s
                try:
                    conn.sendall(b" ")
                except OSError:
                    break
                time.sleep(0.1)
            status, head, body = read_reply(conn)
        assert "slower than" in json_error(status, head, body, 408)["detail"]


# bodies


def test_an_oversized_json_body_is_refused_on_its_content_length_before_any_of_it_is_sent(tmp_path):
    with reducer(tmp_path) as server:
        announce = (
            b"POST /api/v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {2 << 20}\r\n\r\n".encode()
        )
        status, head, body = raw_request(server.port, announce)  # no byte of the body is ever sent
        assert str(1 << 20) in json_error(status, head, body, 413)["detail"]


def test_a_chunked_json_body_is_refused_once_it_passes_the_bound(tmp_path):
    with reducer(tmp_path) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=GENEROUS_S) as conn:
            conn.sendall(
                b"POST /api/v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            piece = b"x" * (64 << 10)
            for _ in range(20):  # 1.25 MiB, and never the closing chunk: the answer cannot wait for the end
                conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            status, head, body = read_reply(conn)
        json_error(status, head, body, 413)


def test_a_model_upload_is_streamed_and_memory_stays_bounded(tmp_path):
    arrays = {"w": np.arange(24 << 20, dtype=np.float32), "b": np.ones(3, np.float32)}  # 96 MiB
    parts = [memoryview(bytes(c)) if i == 0 else c for i, c in enumerate(encode_model_chunks(arrays))]
    chunks = [part[i : i + (1 << 20)] for part in parts for i in range(0, len(part), 1 << 20)]  # as a client sends
    size = sum(len(c) for c in chunks)
    with reducer(tmp_path, max_model_bytes=256 << 20) as server:
        tracemalloc.start()
        try:
            response = httpx.post(
                f"{server.url}/api/v1/models",
                content=iter(chunks),
                headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"},
                timeout=120,
            )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert response.status_code == 201, response.text[:300]
        assert peak < 32 << 20, f"peak {peak >> 20} MiB of Python allocations for a {size >> 20} MiB upload"
        record = response.json()
        assert record["num_parameters"] == (24 << 20) + 3
        stored = httpx.get(f"{server.url}/api/v1/models/{record['id']}/download", timeout=120).content
        assert stored == b"".join(bytes(c) for c in chunks)


def test_an_uploaded_header_is_stored_without_its_metadata(tmp_path):
    model = {"w": np.ones((2, 2), np.float32)}
    with reducer(tmp_path) as server:
        api = f"{server.url}/api/v1"
        blob = encode_model(model, metadata={"fedn.round_result": "{}"})
        record = httpx.post(f"{api}/models", content=blob, timeout=GENEROUS_S).json()
        assert httpx.get(f"{api}/models/{record['id']}/download").content == encode_model(model)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_too_large_upload_is_413_json_and_nothing_is_stored(tmp_path, chunked):
    blob = encode_model({"w": np.ones(1 << 19, np.float32)})  # 2 MiB
    with reducer(tmp_path, max_model_bytes=1 << 20) as server:
        api = f"{server.url}/api/v1"
        content = iter([blob[: 1 << 20], blob[1 << 20 :]]) if chunked else blob
        response = httpx.post(f"{api}/models", content=content, timeout=GENEROUS_S)
        assert response.status_code == 413, response.text[:300]
        assert response.headers["content-type"] == "application/json"
        assert set(response.json()) == {"error", "detail"}
        assert httpx.get(f"{api}/models", timeout=GENEROUS_S).json()["count"] == 0
        assert not list((tmp_path / "models").rglob("*.safetensors"))


def test_uploads_received_at_once_are_bounded(tmp_path):
    with reducer(tmp_path, max_uploads=1) as server:
        upload = f"POST /api/v1/models HTTP/1.1\r\nHost: x\r\nContent-Length: {8 << 20}\r\n\r\n".encode()
        with socket.create_connection(("127.0.0.1", server.port), timeout=GENEROUS_S) as first:
            first.sendall(upload + b"x" * (2 << 20))  # holds the one upload slot, still sending
            status, head, body = raw_request(server.port, upload)
            assert "retry later" in json_error(status, head, body, 503)["detail"]


def test_expect_100_continue_gets_a_go_ahead(tmp_path):
    blob = encode_model({"w": np.ones(4, np.float32)})
    with reducer(tmp_path) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=GENEROUS_S) as conn:
            head = f"POST /api/v1/models HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {len(blob)}"
            conn.sendall(head.encode() + b"\r\n\r\n")
            assert conn.recv(4096).startswith(b"HTTP/1.1 100 ")
            conn.sendall(blob)
            status, _, body = read_reply(conn)
        assert status == 201, body[:300]


# every error the server layer answers itself


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n", 400),
        (b"POST /api/v1/sessions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (64 << 10) + b"\r\n\r\n", 431),
        (b"PUT /api/v1/combiners/c/heartbeat HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n", 413),
    ],
    ids=["request-line", "content-length", "transfer-encoding", "header-size", "body-size"],
)
def test_errors_the_server_answers_itself_are_json(tmp_path, raw, status):
    with reducer(tmp_path) as server:
        json_error(*raw_request(server.port, raw), status)
        assert httpx.get(f"{server.url}/api/v1/health", timeout=GENEROUS_S).status_code == 200


def test_a_failing_app_is_500_json_and_the_server_goes_on():
    def broken(environ, start_response):
        raise RuntimeError("boom")

    server = HttpServer(broken, "127.0.0.1", 0, threads=1, limits=HttpLimits(read_timeout_s=5))
    server.start()
    try:
        document = json_error(*raw_request(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), 500)
        assert "boom" not in document["detail"] and "Traceback" not in document["detail"]
        json_error(*raw_request(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), 500)
    finally:
        server.stop()


def test_keep_alive_serves_several_requests_on_one_connection():
    with echo_server() as server, httpx.Client(base_url=f"http://127.0.0.1:{server.port}") as client:
        for size in (0, 10, 100_000):
            assert client.post("/", content=b"x" * size, timeout=GENEROUS_S).json()["length"] == size
        assert client.post("/", content=iter([b"ab", b"cd"]), timeout=GENEROUS_S).json()["length"] == 4
        head = client.head("/", timeout=GENEROUS_S)
        assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) > 0
        assert client.get("/", timeout=GENEROUS_S).json()["length"] == 0


def test_a_download_the_client_stops_reading_is_cut_and_health_still_answers(tmp_path):
    blob = encode_model({"w": np.zeros(16 << 20, np.float32)})  # 64 MiB: more than socket buffers hold
    with reducer(tmp_path, read_timeout_s=0.5) as server:
        model_id = httpx.post(f"{server.url}/api/v1/models", content=blob, timeout=120).json()["id"]
        with socket.create_connection(("127.0.0.1", server.port), timeout=GENEROUS_S) as stalled:
            stalled.sendall(f"GET /api/v1/models/{model_id}/download HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            time.sleep(2.0)  # reads nothing while the server's write times out
            received = 0
            with contextlib.suppress(ConnectionResetError):
                while chunk := stalled.recv(1 << 20):
                    received += len(chunk)
        assert received < len(blob), "the whole model arrived: the server never cut the stalled download"
        assert httpx.get(f"{server.url}/api/v1/health", timeout=GENEROUS_S).status_code == 200


def test_a_port_in_use_is_a_clear_error():
    with echo_server() as taken, pytest.raises(FednError, match=f"cannot bind 127.0.0.1:{taken.port}"):
        HttpServer(echo_app, "127.0.0.1", taken.port).start()


def test_stop_ends_open_connections_and_frees_the_port():
    server = HttpServer(echo_app, "127.0.0.1", 0, threads=1)
    server.start()
    with socket.create_connection(("127.0.0.1", server.port), timeout=GENEROUS_S) as idle:
        server.stop()
        assert idle.recv(1) == b""  # closed by the server
    with socket.socket() as again:  # a restarted server can bind the port again (closed sockets linger)
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", server.port))


def test_an_answer_that_fails_mid_stream_is_cut_short_and_the_server_goes_on():
    def failing(environ, start_response):
        start_response("200 OK", [("Content-Length", str(4 << 20))])

        def chunks():
            yield b"x" * (1 << 20)
            yield b"x" * (1 << 20)
            raise ChecksumMismatch("the blob does not match its record")

        return chunks()

    server = HttpServer(failing, "127.0.0.1", 0, threads=1)
    server.start()
    try:
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(f"http://127.0.0.1:{server.port}/", timeout=GENEROUS_S)
        with pytest.raises(httpx.RemoteProtocolError):  # served again: the loop survived the failure
            httpx.get(f"http://127.0.0.1:{server.port}/", timeout=GENEROUS_S)
    finally:
        server.stop()
