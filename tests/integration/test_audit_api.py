"""Reading the audit log: ``GET /api/v1/audit`` (Flask test client, its query checked before the store
is touched) and ``fedn audit list`` against a running reducer."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pytest
from flask import Flask

from fedn.audit import AuditLog
from fedn.cli import main
from fedn.clock import ManualClock
from fedn.records import AuditEvent
from fedn.rest_records import record_from_rest
from fedn.store import SQLiteStateStore
from fedn.store.base import StateStore
from reducer.admin_api import create_admin_api
from reducer.api import register_error_handlers
from reducer.server import ReducerServer
from reducer.settings import ReducerSettings

T0 = 1_800_000_000.0


@dataclass
class Ctx:
    state: StateStore
    audit: AuditLog


@pytest.fixture
def state():
    store = SQLiteStateStore(":memory:")
    yield store
    store.close()


@pytest.fixture
def http(state):
    app = Flask("test")
    app.register_blueprint(create_admin_api(Ctx(state, AuditLog(state, ManualClock()))))
    register_error_handlers(app)
    return app.test_client()


def _fill(state: StateStore, n: int) -> None:
    times = iter(range(n))
    audit = AuditLog(state, ManualClock(), wall_time=lambda: T0 + next(times))
    for i in range(n):
        audit.record(
            "session.create" if i % 2 else "model.download",
            subject=f"user{i % 3}",
            role="admin",
            peer="127.0.0.1:1",
            target=f"t{i}",
            outcome="ok" if i % 5 else "denied",
        )


def test_lists_newest_first_with_a_cursor_to_the_next_page(http, state):
    _fill(state, 7)
    first = http.get("/api/v1/audit?limit=3").get_json()
    assert [e["target"] for e in first["items"]] == ["t6", "t5", "t4"]
    assert first["count"] == 3 and first["next_before"] == T0 + 4
    second = http.get(f"/api/v1/audit?limit=3&before={first['next_before']}").get_json()
    third = http.get(f"/api/v1/audit?limit=3&before={second['next_before']}").get_json()
    assert [e["target"] for e in second["items"] + third["items"]] == ["t3", "t2", "t1", "t0"]
    assert third["next_before"] is None
    assert record_from_rest(AuditEvent, first["items"][0]).outcome == "ok"


def test_filters_by_action_and_subject(http, state):
    _fill(state, 7)
    body = http.get("/api/v1/audit?action=session.create&subject=user1").get_json()
    assert [e["target"] for e in body["items"]] == ["t1"]
    assert body == {"items": body["items"], "count": 1, "total": 1, "next_cursor": None, "next_before": None}


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=1001",
        "limit=ten",
        "before=nan",
        "before=inf",
        "action=session.nuke",
        "subject=" + "x" * 200,
        "subject=a%0Ab",
        "offset=3",
    ],
)
def test_bad_queries_are_400_with_a_message(http, query: str):
    response = http.get(f"/api/v1/audit?{query}")
    assert response.status_code == 400, response.get_data(as_text=True)
    assert set(response.get_json()) == {"error", "detail"}


@pytest.fixture(autouse=False)
def _restore_logging():
    """`main` points the root logger at this test's captured stderr; put it back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_cli_lists_the_audit_log_of_a_running_reducer(tmp_path: Path, capsys, _restore_logging):
    db = tmp_path / "s.db"
    settings = ReducerSettings(host="127.0.0.1", port=0, state=f"sqlite:///{db}", models=(tmp_path / "m").as_uri())
    server = ReducerServer(settings)
    server.start()
    writer = SQLiteStateStore(str(db))
    try:
        _fill(writer, 4)
        assert main(["audit", "list", "--reducer", server.url, "--limit", "2", "--json"]) == 0
        document = json.loads(capsys.readouterr().out)  # one document: {"items": [...], "total": N}
        assert [e["target"] for e in document["items"]] == ["t3", "t2"] and document["total"] == 4

        assert main(["audit", "list", "--reducer", server.url, "--action", "session.create"]) == 0
        out = capsys.readouterr().out
        assert "t3" in out and "t1" in out and "t2" not in out and "user0" in out
        assert "2 events" in out

        assert main(["audit", "list", "--reducer", server.url, "--action", "nope"]) == 2
        assert "action" in capsys.readouterr().err
    finally:
        writer.close()
        server.stop()
