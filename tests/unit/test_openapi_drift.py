"""The OpenAPI document, the Flask routes and the access rules cannot drift apart.

Every failure names the route and what it lacks, e.g. ``POST /api/v1/sessions/{session_id}/stop: a
route with no operation in the OpenAPI document (add it to reducer/openapi.py)``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedn.audit import AuditLog
from fedn.auth.policy import REST_RULES
from fedn.auth.tokens import Role, TokenIssuer, TokenVerifier, generate_signing_key, load_private_key
from fedn.clock import SystemClock
from fedn.records import AuditEvent, ClientRecord, CombinerRecord, ModelRecord, Round, Session, TokenRecord
from fedn.store.base import PageKey
from fedn.store.local import LocalModelStore
from fedn.store.sqlite import SQLiteStateStore
from reducer.api import ApiContext
from reducer.app import create_app
from reducer.auth import ReducerAuth
from reducer.openapi import LIST_QUERIES, openapi_document
from reducer.paging import encode_cursor
from reducer.registry import CombinerRegistry

_ID = "x1"  # every path parameter; a session with this id exists
# A valid value of each query parameter a list route documents; a new parameter needs one here.
_SAMPLES = {
    "limit": "2",
    "cursor": encode_cursor(PageKey(1.0, "a")),
    "offset": "0",
    "session_id": _ID,
    "include_expired": "true",
    "before": "1.5",
    "action": "session.create",
    "subject": "alice",
}


@pytest.fixture
def app_and_token(tmp_path: Path) -> Iterator[tuple]:
    state = SQLiteStateStore(":memory:")
    key = load_private_key(generate_signing_key(tmp_path / "keys")[0])
    issuer = TokenIssuer(key)
    auth = ReducerAuth(state, issuer, TokenVerifier(key.public_key()))
    registry = CombinerRegistry(state, combiner_timeout_s=30)
    ctx = ApiContext(
        state, LocalModelStore(tmp_path / "m"), registry, None, auth=auth, audit=AuditLog(state, SystemClock())
    )
    for i in range(2):  # two of everything, so a list that ignores limit=1 shows
        state.put_session(Session(id=f"x{i + 1}", rounds=1, seed_model_id="m", model_id="m"))
        state.put_round(Round(session_id=_ID, index=i + 1, model_in="m"))
        state.put_model(ModelRecord(key="k", sha256="0", size_bytes=1, num_parameters=1, session_id=_ID))
        state.put_client(ClientRecord(name="c"))
        state.put_combiner(CombinerRecord(id=f"k{i}", name="k", address="h:1"))
        state.append_audit(
            AuditEvent(
                id=f"e{i}",
                time=1.0 + i,
                action="session.create",
                subject="alice",
                role="admin",
                peer="p",
                target="t",
                outcome="ok",
            )
        )
        state.put_token(
            TokenRecord(id=f"t{i}", subject="s", role="client", issued_at=1.0, expires_at=9e9, issued_by="a")
        )
    yield create_app(ctx), issuer.issue(Role.ADMIN, "admin", 600).token
    state.close()


def _routes(app, prefix: str = "/") -> set[tuple[str, str]]:
    """(METHOD, OpenAPI path) of every Flask rule under ``prefix`` (``{name}`` for ``<name>``)."""
    return {
        (method, re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule))
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith(prefix) and rule.endpoint != "static"
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }


def _operations() -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, ops in openapi_document()["paths"].items() for method in ops}


def test_every_route_is_documented_and_every_operation_has_a_route(app_and_token):
    app, _ = app_and_token
    operations = _operations()
    problems = [
        f"{m} {p}: a route with no operation in the OpenAPI document (add it to reducer/openapi.py)"
        for m, p in sorted(_routes(app, "/api/v1") - operations)
    ] + [
        f"{m} {p}: documented in the OpenAPI document but no Flask route serves it"
        for m, p in sorted(operations - _routes(app))
    ]
    assert not problems, "\n".join(problems)


def test_every_route_has_an_access_rule(app_and_token):
    app, _ = app_and_token
    problems = [
        f"{m} {p}: no entry in fedn.auth.policy.REST_RULES, so it is refused to everyone"
        for m, p in sorted(_routes(app))
        if (m, p) not in REST_RULES
    ]
    assert not problems, "\n".join(problems)


def test_every_list_operation_documents_its_paging_parameters():
    problems = []
    for path, ops in openapi_document()["paths"].items():
        for method, op in ops.items():
            ok = op["responses"].get("200", {}).get("content", {}).get("application/json", {}).get("schema", {})
            is_list = "next_cursor" in ok.get("properties", {})
            if is_list and (method.upper(), path) not in LIST_QUERIES:
                problems.append(f"{method.upper()} {path}: answers a page but has no query model in LIST_QUERIES")
            documented = {p["name"] for p in op.get("parameters", []) if p["in"] == "query"}
            if is_list and not {"limit", "cursor"} <= documented:
                problems.append(f"{method.upper()} {path}: a list without limit and cursor parameters")
            model = LIST_QUERIES.get((method.upper(), path))
            if model is not None and documented != set(model.model_fields):
                problems.append(
                    f"{method.upper()} {path}: documents query {sorted(documented)}, "
                    f"its model takes {sorted(model.model_fields)}"
                )
    assert not problems, "\n".join(problems)


def test_list_routes_accept_exactly_their_documented_query_parameters(app_and_token):
    app, token = app_and_token
    http, headers = app.test_client(), {"Authorization": f"Bearer {token}"}
    problems = []
    for (method, path), _model in sorted(LIST_QUERIES.items()):
        url = path.replace("{session_id}", _ID)
        op = openapi_document()["paths"][path][method.lower()]
        names = [p["name"] for p in op.get("parameters", []) if p["in"] == "query"]
        for name in names:
            if name not in _SAMPLES:
                problems.append(f"{method} {path}: add a valid sample of its query parameter {name!r} to _SAMPLES")
                continue
            query = f"{name}={_SAMPLES[name]}"  # one at a time: offset is documented as "not with cursor"
            answer = http.open(f"{url}?{query}", method=method, headers=headers)
            if answer.status_code != 200:
                problems.append(f"{method} {path}: refuses its documented {query!r}: {answer.get_json()}")
        answer = http.open(f"{url}?undocumented=1", method=method, headers=headers)
        if answer.status_code != 400:
            problems.append(f"{method} {path}: accepts an undocumented query parameter (status {answer.status_code})")
        for bad in ("limit=0", "limit=1001"):
            if http.open(f"{url}?{bad}", method=method, headers=headers).status_code != 400:
                problems.append(f"{method} {path}: does not refuse {bad} with 400")
        body = http.open(f"{url}?limit=1", method=method, headers=headers).get_json()
        if set(body or {}) < {"items", "count", "total", "next_cursor"} or len(body["items"]) > 1:
            problems.append(f"{method} {path}: does not answer a page of at most limit items: {body}")
    assert not problems, "\n".join(problems)
