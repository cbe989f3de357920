"""The REST API's edge (issue 14, G and H): NaN and infinities, deep nesting, huge integers, oversized
bodies, control characters in ids and unbounded lists are refused with a 4xx JSON error naming what is
wrong, before any store is touched; nothing a refused request carried is stored."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import httpx
import numpy as np
import pytest

from fedn.codec import encode_model
from fedn.store import LocalModelStore, SQLiteStateStore
from reducer.api import ApiContext
from reducer.app import create_app
from reducer.openapi import openapi_document
from reducer.registry import CombinerRegistry
from reducer.server import ReducerServer
from reducer.settings import ReducerSettings

MODEL = {"w": np.ones((3, 2), np.float32)}
BIG_ENOUGH_FOR_MODELS = 64 << 20  # model uploads may be large; JSON documents have a bound of their own


@pytest.fixture
def http(tmp_path: Path):
    state = SQLiteStateStore(":memory:")
    registry = CombinerRegistry(state, combiner_timeout_s=30.0)
    ctx = ApiContext(state, LocalModelStore(tmp_path / "models"), registry, None, max_model_bytes=BIG_ENOUGH_FOR_MODELS)
    return create_app(ctx).test_client()


@pytest.fixture
def seeded(http):
    response = http.post("/api/v1/models", data=encode_model(MODEL), content_type="application/octet-stream")
    assert response.status_code == 201, response.get_data(as_text=True)
    return http


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    assert response.content_type == "application/json", response.content_type
    body = response.get_json()
    assert set(body) == {"error", "detail"}, body
    assert "Traceback" not in body["detail"]
    return body


def _post_text(http, path: str, text: str, method: str = "POST"):
    return http.open(path, method=method, data=text, content_type="application/json")


def _nested(depth: int) -> str:
    return '{"rounds": 1, "config": ' + '{"a": ' * depth + "1" + "}" * depth + "}"


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e400", "-1e999"])
def test_non_finite_numbers_are_refused_naming_the_field_and_nothing_is_stored(seeded, constant):
    text = '{"rounds": 1, "config": {"lr": CONSTANT}}'.replace("CONSTANT", constant)
    body = _error(_post_text(seeded, "/api/v1/sessions", text), 400)
    assert body["detail"].startswith("config.lr: "), body
    assert "not allowed" in body["detail"] or "finite" in body["detail"], body
    listed = seeded.get("/api/v1/sessions")
    empty = {"items": [], "count": 0, "total": 0, "next_cursor": None}
    assert listed.status_code == 200 and listed.get_json() == empty


def test_non_finite_numbers_in_lists_and_top_level_fields_name_their_place(seeded):
    body = _error(_post_text(seeded, "/api/v1/sessions", '{"rounds": 1, "fraction": NaN}'), 400)
    assert body["detail"] == "fraction: NaN is not allowed"
    text = '{"num_clients": 0, "client_ids": ["a", NaN]}'
    body = _error(_post_text(seeded, "/api/v1/combiners/c/heartbeat", text, method="PUT"), 400)
    assert body["detail"] == "client_ids.1: NaN is not allowed"


@pytest.mark.parametrize("depth", [33, 1000, 100_000])
def test_deeply_nested_json_is_400(seeded, depth):
    body = _error(_post_text(seeded, "/api/v1/sessions", _nested(depth)), 400)
    assert "nested deeper than 32" in body["detail"], body
    bare = _error(_post_text(seeded, "/api/v1/sessions", "[" * depth + "]" * depth), 400)
    assert "nested deeper than 32" in bare["detail"], bare
    assert seeded.get("/api/v1/sessions").get_json()["count"] == 0


@pytest.mark.parametrize("route", ["/api/v1/sessions", "/api/v1/models", "/api/v1/clients"])
@pytest.mark.parametrize(("param", "value"), [("offset", 2**63), ("offset", 10**9 + 1), ("limit", 2**63)])
def test_integers_in_query_strings_are_bounded(http, route, param, value):
    body = _error(http.get(f"{route}?{param}={value}"), 400)
    assert body["detail"].startswith(f"{param}: "), body


def test_integers_in_bodies_are_bounded_and_named(seeded):
    for text, field in [
        ('{"rounds": 1, "seed": 9223372036854775808}', "seed"),
        ('{"rounds": 1, "config": {"epochs": 9223372036854775808}}', "config.epochs"),
        ('{"rounds": 1, "min_clients": ' + "9" * 5000 + "}", "min_clients"),
    ]:
        body = _error(_post_text(seeded, "/api/v1/sessions", text), 400)
        assert body["detail"].startswith(f"{field}: "), body
    assert seeded.get("/api/v1/sessions").get_json()["count"] == 0


def test_an_oversized_json_body_is_413_json_and_a_large_model_upload_still_fits(seeded):
    text = json.dumps({"rounds": 1, "config": {"blob": "x" * (2 << 20)}})
    body = _error(_post_text(seeded, "/api/v1/sessions", text), 413)
    assert "bytes" in body["detail"], body
    big = {"w": np.zeros(1 << 20, np.float32)}  # 4 MiB: over the JSON bound, under the model bound
    response = seeded.post("/api/v1/models", data=encode_model(big), content_type="application/octet-stream")
    assert response.status_code == 201, response.get_data(as_text=True)


def test_the_real_server_answers_an_oversized_body_with_json_whether_chunked_or_not(tmp_path: Path):
    settings = ReducerSettings(
        host="127.0.0.1", port=0, state=f"sqlite:///{tmp_path / 'state.db'}", models=(tmp_path / "models").as_uri()
    )
    server = ReducerServer(settings)
    server.start()
    try:
        text = json.dumps({"rounds": 1, "config": {"blob": "x" * (2 << 20)}}).encode()
        url = f"{server.url}/api/v1/sessions"
        headers = {"content-type": "application/json"}
        for content in (text, iter([text[: 1 << 20], text[1 << 20 :]])):  # Content-Length, then chunked
            response = httpx.post(url, content=content, headers=headers, timeout=30)
            assert response.status_code == 413, response.text[:200]
            assert response.headers["content-type"] == "application/json"
            assert set(response.json()) == {"error", "detail"}
        assert httpx.get(url, timeout=30).json()["count"] == 0
    finally:
        server.stop()


def test_errors_the_http_server_answers_itself_are_json_too(tmp_path: Path):
    """Malformed HTTP never reaches Flask: the HTTP server answers it, in the same shape."""
    settings = ReducerSettings(
        host="127.0.0.1", port=0, state=f"sqlite:///{tmp_path / 'state.db'}", models=(tmp_path / "models").as_uri()
    )
    server = ReducerServer(settings)
    server.start()
    try:
        requests = {
            501: b"POST /api/v1/sessions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
            400: b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
        }
        for status, raw in requests.items():
            with socket.create_connection(("127.0.0.1", server.port), timeout=30) as conn:
                conn.sendall(raw)
                reply = b""
                while chunk := conn.recv(65536):
                    reply += chunk
            head, _, body = reply.partition(b"\r\n\r\n")
            assert head.split(b" ", 2)[1] == str(status).encode(), head[:200]
            assert b"content-type: application/json" in head.lower(), head[:300]
            assert set(json.loads(body)) == {"error", "detail"}
        assert httpx.get(f"{server.url}/api/v1/health", timeout=30).status_code == 200
    finally:
        server.stop()


def test_a_body_that_is_not_json_is_415_json(seeded):
    body = _error(seeded.post("/api/v1/sessions", data='{"rounds": 1}', content_type="text/plain"), 415)
    assert "application/json" in body["detail"]
    assert seeded.get("/api/v1/sessions").get_json()["count"] == 0


@pytest.mark.parametrize(
    ("method", "path", "param"),
    [
        ("GET", "/api/v1/sessions/a%00b", "session_id"),
        ("GET", "/api/v1/sessions/a%0Ab/rounds", "session_id"),
        ("GET", "/api/v1/rounds/%1B%5B31m", "round_id"),
        ("GET", "/api/v1/models/a%00b", "model_id"),
        ("GET", "/api/v1/models/a%7Fb/download", "model_id"),
        ("GET", "/api/v1/clients/a%00b", "client_id"),
        ("GET", "/api/v1/combiners/a%00b", "combiner_id"),
        ("PUT", "/api/v1/combiners/a%00b/heartbeat", "combiner_id"),
        ("GET", "/api/v1/sessions/" + "x" * 129, "session_id"),
        ("GET", "/api/v1/models/a%20b", "model_id"),
    ],
)
def test_bad_ids_in_paths_are_400_naming_the_parameter(http, method, path, param):
    body = _error(http.open(path, method=method, json={} if method == "PUT" else None), 400)
    assert body["detail"].startswith(f"{param}: "), body
    assert "\x00" not in body["detail"] and "\n" not in body["detail"]


def test_ids_and_lists_in_bodies_are_bounded(seeded):
    assert seeded.post("/api/v1/combiners", json={"id": "c1", "address": "c1:1"}).status_code == 200
    many = {"num_clients": 10_001, "client_ids": [f"c-{i}" for i in range(10_001)]}  # past max_clients_per_combiner
    body = _error(seeded.put("/api/v1/combiners/c1/heartbeat", json=many), 400)
    assert "10001" in body["detail"].replace(",", "") and "10000" in body["detail"].replace(",", ""), body
    _error(seeded.put("/api/v1/combiners/c1/heartbeat", json={"client_ids": ["ok", "a\x00b"]}), 400)
    _error(seeded.put("/api/v1/combiners/c1/heartbeat", json={"client_ids": ["x" * 129]}), 400)
    _error(seeded.put("/api/v1/combiners/c1/heartbeat", json={"num_clients": 2**63}), 400)
    _error(seeded.post("/api/v1/clients/assign", json={"name": "n", "client_id": "a\x00b"}), 400)
    _error(seeded.post("/api/v1/clients/assign", json={"name": "line\nbreak"}), 400)
    _error(seeded.post("/api/v1/combiners", json={"id": "c2", "name": "x" * 10_000, "address": "c2:1"}), 400)
    _error(seeded.post("/api/v1/combiners", json={"id": "c2", "address": "c2:1\r\nX-Evil: 1"}), 400)
    _error(seeded.post("/api/v1/sessions", json={"rounds": 1, "model_id": "a\x00b"}), 400)
    _error(seeded.post("/api/v1/sessions", json={"rounds": 1, "config": {f"k{i}": i for i in range(1000)}}), 400)
    _error(seeded.post("/api/v1/sessions", json={"rounds": 1, "config": {"k\x00": 1}}), 400)
    _error(seeded.get("/api/v1/models?session_id=a%00b"), 400)
    ok = [f"client-{i}" for i in range(100)]
    beat = seeded.put("/api/v1/combiners/c1/heartbeat", json={"num_clients": 100, "client_ids": ok})
    assert beat.status_code == 200, beat.get_data(as_text=True)
    assert seeded.get("/api/v1/sessions").get_json()["count"] == 0


def _write_routes() -> list[tuple[str, str, bool]]:
    """Every POST and PUT of the OpenAPI document, so a route added later is covered without editing this;
    with whether it takes a JSON body (a model upload takes a binary one)."""
    doc = openapi_document()
    return [
        (m.upper(), p, "application/json" in op.get("requestBody", {}).get("content", {}))
        for p, ops in doc["paths"].items()
        for m, op in ops.items()
        if m in ("post", "put")
    ]


@pytest.mark.parametrize(("method", "path", "takes_json"), _write_routes())
@pytest.mark.parametrize(
    ("text", "refusal"),
    [
        ('{"rounds": 1, "config": {"lr": NaN}}', "config.lr: NaN is not allowed"),
        ('{"client_ids": [Infinity]}', "client_ids.0: Infinity is not allowed"),
        ('{"x": -Infinity}', "x: -Infinity is not allowed"),
        ('{"x": ' + "[" * 1000 + "]" * 1000 + "}", "nested deeper than 32 levels"),
        ("[" * 50 + "]" * 50, "nested deeper than 32 levels"),
    ],
    ids=["nan", "infinity", "minus-infinity", "deep-1000", "deep-50"],
)
def test_every_write_route_refuses_nan_and_deep_json(seeded, method, path, takes_json, text, refusal):
    assert seeded.post("/api/v1/combiners", json={"id": "c", "address": "c:1"}).status_code == 200
    concrete = path.replace("{combiner_id}", "c")
    body = _error(_post_text(seeded, concrete, text, method=method), 400)
    if takes_json:  # the edge refused it, before any other check
        assert refusal in body["detail"], body
    assert seeded.get("/api/v1/sessions").get_json()["count"] == 0
    assert seeded.get("/api/v1/combiners/c").get_json()["num_clients"] == 0
