"""REST lists (limit, cursor, total, ISO times), the API client that pages through them, the CLI list
commands, and the Swagger UI page; all over the Flask test client (no sockets)."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from fedn.api_client import ReducerAPI
from fedn.audit import AuditLog
from fedn.auth.tokens import Role, TokenIssuer, generate_signing_key, load_private_key
from fedn.cli import main
from fedn.clock import SystemClock
from fedn.records import ClientRecord, CombinerRecord, ModelRecord, Round, Session
from fedn.rest_records import iso_utc, record_from_rest, record_to_rest
from fedn.store.local import LocalModelStore
from fedn.store.sqlite import SQLiteStateStore
from reducer.api import ApiContext
from reducer.app import create_app
from reducer.auth import ReducerAuth
from reducer.registry import CombinerRegistry
from reducer.swagger import ASSETS

T0 = 1_800_000_000.0
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


@pytest.fixture
def state() -> Iterator[SQLiteStateStore]:
    store = SQLiteStateStore(":memory:")
    yield store
    store.close()


@pytest.fixture
def http(state, tmp_path: Path):
    registry = CombinerRegistry(state, combiner_timeout_s=1e9)
    return create_app(ApiContext(state, LocalModelStore(tmp_path / "m"), registry, None)).test_client()


def _sessions(state, n: int, start: int = 0) -> list[Session]:
    made = [
        Session(id=f"s{i:03d}", rounds=1, seed_model_id="m", model_id="m", created_at=T0 + i // 2, updated_at=T0)
        for i in range(start, start + n)
    ]
    for s in made:
        state.put_session(s)
    return made


def _walk(http, url: str, limit: int, between=lambda: None) -> tuple[list[str], list[dict]]:
    ids, bodies, cursor = [], [], None
    for _ in range(100):
        sep = "&" if "?" in url else "?"
        response = http.get(f"{url}{sep}limit={limit}" + (f"&cursor={cursor}" if cursor else ""))
        assert response.status_code == 200, response.get_data(as_text=True)
        body = response.get_json()
        bodies.append(body)
        ids += [item["id"] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            return ids, bodies
        between()
    raise AssertionError("paging did not end")


def test_sessions_page_by_cursor_with_totals_and_no_skips_while_sessions_are_added(http, state):
    made = _sessions(state, 7)
    added = iter(range(100, 110))
    ids, bodies = _walk(http, "/api/v1/sessions", 3, lambda: _sessions(state, 1, next(added)))
    assert ids == [s.id for s in sorted(made, key=lambda s: (s.created_at, s.id), reverse=True)]
    assert [b["count"] for b in bodies] == [3, 3, 1]
    assert bodies[0]["total"] == 7 and bodies[-1]["total"] == 9  # total counts what matches now
    assert set(bodies[0]) == {"items", "count", "total", "next_cursor"}


def test_combiners_clients_and_models_honour_limit_and_cursor(http, state):
    for i in range(5):
        state.put_combiner(
            CombinerRecord(id=f"k{i}", name="k", address="h:1", registered_at=T0 + i, last_seen=T0 + 1e6)
        )
        state.put_client(ClientRecord(id=f"c{i}", name="c", assigned_at=T0 + i))
        state.put_model(ModelRecord(id=f"m{i}", key="k", sha256="0", size_bytes=1, num_parameters=1, created_at=T0))
    for path, expected in [
        ("/api/v1/combiners", ["k0", "k1", "k2", "k3", "k4"]),  # oldest registered first
        ("/api/v1/clients", ["c4", "c3", "c2", "c1", "c0"]),
        ("/api/v1/models", ["m4", "m3", "m2", "m1", "m0"]),  # one created_at: by id
    ]:
        ids, bodies = _walk(http, path, 2)
        assert ids == expected, path
        assert [(b["count"], b["total"]) for b in bodies] == [(2, 5), (2, 5), (1, 5)], path


def test_rounds_honour_limit(http, state):
    _sessions(state, 1)
    for index in range(1, 6):
        state.put_round(Round(id=f"r{index}", session_id="s000", index=index, model_in="m"))
    first = http.get("/api/v1/sessions/s000/rounds?limit=2").get_json()
    assert [r["index"] for r in first["items"]] == [1, 2] and first["total"] == 5
    ids, _ = _walk(http, "/api/v1/sessions/s000/rounds", 2)
    assert ids == ["r1", "r2", "r3", "r4", "r5"]


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("cursor=garbage!", "cursor"),
        ("cursor=" + "A" * 600, "cursor"),
        ("cursor=WzEsIiJd", "cursor"),  # [1,""]: well-formed base64 and JSON, not an id
        ("cursor=WzEuMCwiczAwMCJd&offset=2", "not both"),
        ("bogus=1", "bogus"),
    ],
)
def test_bad_page_queries_are_one_line_400s(http, state, query: str, says: str):
    _sessions(state, 2)
    response = http.get(f"/api/v1/sessions?{query}")
    assert response.status_code == 400
    body = response.get_json()
    assert set(body) == {"error", "detail"} and says in body["detail"] and "\n" not in body["detail"]


def test_records_carry_iso_8601_utc_times_that_read_back(http, state):
    (session,) = _sessions(state, 1)
    state.put_round(Round(session_id=session.id, index=1, model_in="m", started_at=T0 + 0.25))
    item = http.get("/api/v1/sessions").get_json()["items"][0]
    assert ISO.match(item["created_at"]) and item["created_at"] == iso_utc(session.created_at)
    assert datetime.fromisoformat(item["created_at"]).timestamp() == session.created_at
    round_ = http.get(f"/api/v1/sessions/{session.id}/rounds").get_json()["items"][0]
    assert round_["started_at"] == "2027-01-15T08:00:00.250000Z" and round_["finished_at"] is None
    assert record_from_rest(Session, record_to_rest(session)) == session


class _TestClientTransport(httpx.BaseTransport):
    """httpx over the Flask test client: the API client without a socket."""

    def __init__(self, http) -> None:
        self._http = http

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        answer = self._http.open(
            request.url.raw_path.decode(), method=request.method, headers=dict(request.headers), data=request.read()
        )
        return httpx.Response(answer.status_code, headers=dict(answer.headers), content=answer.get_data())


@pytest.fixture
def api(http) -> Iterator[ReducerAPI]:
    client = ReducerAPI("http://reducer.test")
    client._http = httpx.Client(transport=_TestClientTransport(http))
    yield client
    client.close()


def test_api_client_follows_cursors_up_to_a_limit_and_gives_epoch_floats_back(api, state):
    made = _sessions(state, 2300)
    everything = api.list_sessions()
    assert len(everything) == 2300 and everything.total == 2300 and everything.next_cursor is None
    assert everything[0] == max(made, key=lambda s: (s.created_at, s.id))  # floats again, equal records
    some = api.list_sessions(limit=1500)  # two requests: 1000 + 500, so the cursor continues exactly
    assert len(some) == 1500 and some.total == 2300 and some.next_cursor is not None
    rest = api.list_sessions(cursor=some.next_cursor)
    assert [s.id for s in some + rest] == [s.id for s in everything]


@pytest.fixture
def cli(api, monkeypatch):
    for module in ("sessions", "models"):  # the commands' `with reducer_api(args)` must not close it
        monkeypatch.setattr(f"fedn.cli.{module}.reducer_api", lambda args: contextlib.nullcontext(api))
    return api


def test_cli_lists_say_when_they_stop_early_and_print_one_json_document(cli, state, capsys):
    _sessions(state, 5)
    assert main(["session", "list", "--limit", "3"]) == 0
    out, err = capsys.readouterr()
    assert len(out.strip().splitlines()) == 3 and err.strip().splitlines()[-1].startswith("3 of 5 shown")
    assert main(["session", "list", "--all"]) == 0
    out, err = capsys.readouterr()
    assert len(out.strip().splitlines()) == 5 and "shown" not in err
    assert main(["session", "list", "--limit", "2", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["total"] == 5 and [s["id"] for s in document["items"]] == ["s004", "s003"]
    assert ISO.match(document["items"][0]["created_at"])
    assert main(["model", "list", "--limit", "0"]) == 2
    assert "--limit" in capsys.readouterr().err


def test_swagger_page_and_assets_load_offline_without_a_token(tmp_path: Path, state):
    key = load_private_key(generate_signing_key(tmp_path / "keys")[0])
    issuer = TokenIssuer(key)
    from fedn.auth.tokens import TokenVerifier

    auth = ReducerAuth(state, issuer, TokenVerifier(key.public_key()))
    registry = CombinerRegistry(state, combiner_timeout_s=30)
    ctx = ApiContext(
        state, LocalModelStore(tmp_path / "m"), registry, None, auth=auth, audit=AuditLog(state, SystemClock())
    )
    http = create_app(ctx).test_client()
    page = http.get("/api/v1/docs")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert "//" not in re.sub(r"<!--.*?-->", "", html).replace("://", "")  # no CDN, no absolute URL
    for src in re.findall(r'(?:src|href)="([^"]+)"', html):
        if src.startswith("data:"):  # inline (the empty favicon): nothing to fetch
            continue
        asset = http.get(f"/api/v1/{src}")
        assert asset.status_code == 200 and len(asset.get_data()) > 50, src
    assert set(re.findall(r'(?:src|href)="docs/([^"]+)"', html)) <= set(ASSETS)
    assert b"SwaggerUIBundle" in http.get("/api/v1/docs/swagger-ui-bundle.js").get_data()
    assert http.get("/api/v1/docs/index.html").status_code == 404  # only the listed files
    assert http.get("/api/v1/docs/..%2Fapi.py").status_code in (400, 404)
    # the document keeps its roles; the page's script sends the token it asks for
    assert http.get("/api/v1/openapi.json").status_code == 401
    token = issuer.issue(Role.VIEWER, "alice", 600).token
    doc = http.get("/api/v1/openapi.json", headers={"Authorization": f"Bearer {token}"}).get_json()
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    script = http.get("/api/v1/docs/fedn-docs.js").get_data(as_text=True)
    assert '"openapi.json"' in script and "Bearer " in script and 'preauthorizeApiKey("bearer"' in script
