"""The audit log: one JSON line per event on ``fedn.audit``, one stored event, never a token, every
field one bounded line, and a state store outage neither raises nor loses what fits in the queue."""

from __future__ import annotations

import json
import logging
import threading
from datetime import datetime

import pytest

from fedn.audit import ACTIONS, DEFAULT_RETENTION_DAYS, AuditLog, scrub
from fedn.clock import ManualClock
from fedn.errors import InvalidArgument, StoreError
from fedn.records import AuditEvent
from fedn.store import SQLiteStateStore

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiJjbGllbnQtMSIsInJvbGUiOiJjbGllbnQiLCJqdGkiOiJhYmMifQ"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
SECRETS = [JWT, JWT.split(".", 1)[1], "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c", "opaque-secret-42"]
T0 = 1_800_000_000.0


class FlakyState(SQLiteStateStore):
    """An in-memory store whose audit writes fail while ``down``."""

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.down = False
        self.attempts = 0

    def append_audit(self, event: AuditEvent) -> None:
        self.attempts += 1
        if self.down:
            raise StoreError("state store unreachable")
        super().append_audit(event)


@pytest.fixture
def state():
    store = FlakyState()
    yield store
    store.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(100.0)


def _lines(caplog) -> list[dict]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "fedn.audit"]


def test_one_json_line_and_one_stored_event(state, clock, caplog):
    audit = AuditLog(state, clock, wall_time=lambda: T0)
    with caplog.at_level(logging.INFO, logger="fedn.audit"):
        event = audit.record(
            "session.create", subject="alice", role="admin", peer="10.0.0.5:4431", target="s1", outcome="ok"
        )
    (line,) = _lines(caplog)
    assert list(line) == ["time", "subject", "role", "peer", "action", "target", "outcome", "detail"]
    assert datetime.fromisoformat(line["time"]).timestamp() == pytest.approx(T0)
    assert line["time"].endswith("Z")
    assert line | {"time": None} == {
        "time": None,
        "subject": "alice",
        "role": "admin",
        "peer": "10.0.0.5:4431",
        "action": "session.create",
        "target": "s1",
        "outcome": "ok",
        "detail": "",
    }
    assert state.list_audit() == [event]


def test_times_strictly_increase_so_the_cursor_never_skips_an_event(state, clock):
    audit = AuditLog(state, clock, wall_time=lambda: T0)  # a clock that does not move
    for i in range(5):
        audit.record("model.download", subject="c", role="client", peer="p", target=f"m{i}", outcome="ok")
    times = [e.time for e in reversed(state.list_audit())]
    assert times == sorted(set(times)) and len(times) == 5
    first_page = state.list_audit(limit=2)
    rest = state.list_audit(before=first_page[-1].time)
    assert [e.target for e in first_page + rest] == ["m4", "m3", "m2", "m1", "m0"]


@pytest.mark.parametrize(
    "text",
    [
        JWT,
        f"invalid token {JWT} presented",
        f"Authorization: Bearer {JWT}",
        "Bearer opaque-secret-42",
        "bearer\topaque-secret-42",
        "header BEARER   opaque-secret-42, retry",
        f"GET /api/v1/models?token={JWT}",
        "token=opaque-secret-42&x=1",
        f"{JWT}\x00{JWT}",
        f"models/{JWT}/x",
    ],
)
def test_no_token_in_any_field(state, clock, caplog, text: str):
    audit = AuditLog(state, clock, wall_time=lambda: T0)
    with caplog.at_level(logging.INFO, logger="fedn.audit"):
        audit.record("auth.denied", subject=text, role=text, peer=text, target=text, outcome="denied", detail=text)
    stored = state.list_audit()[0].model_dump()
    for fields in (_lines(caplog)[0], stored):
        for name, value in fields.items():
            for secret in SECRETS:
                assert secret not in str(value), (name, value)
    assert "[redacted]" in stored["detail"] or "[token]" in stored["detail"]


def test_scrub_keeps_what_is_not_a_secret():
    for text in ("model m-1.safetensors", "combiner-0.site-a.internal:7000", "token jti1 revoked", "eyJ"):
        assert scrub(text) == text


def test_every_field_is_one_bounded_printable_line(state, clock, caplog):
    audit = AuditLog(state, clock, wall_time=lambda: T0)
    huge = "x\n\r\x1b[31m" * 50_000
    with caplog.at_level(logging.INFO, logger="fedn.audit"):
        audit.record("update.rejected", subject=huge, role=huge, peer=huge, target=huge, outcome="refused", detail=huge)
    (record,) = [r for r in caplog.records if r.name == "fedn.audit"]
    message = record.getMessage()
    assert "\n" not in message and "\r" not in message and "\x1b" not in message
    assert len(message) < 4000  # under the log handler's message bound: the JSON is never cut
    stored = state.list_audit()[0]
    for name in ("subject", "role", "peer", "target", "detail"):
        value = getattr(stored, name)
        assert value.isprintable() and 0 < len(value) <= 800, name


def test_unknown_action_or_outcome_is_a_clear_error(state, clock):
    audit = AuditLog(state, clock)
    with pytest.raises(InvalidArgument, match="audit action"):
        audit.record("session.nuke", subject="a", role="admin", peer="p", target="t", outcome="ok")
    with pytest.raises(InvalidArgument, match="outcome"):
        audit.record("session.stop", subject="a", role="admin", peer="p", target="t", outcome="maybe")
    assert state.list_audit() == []
    assert {"auth.denied", "token.issue", "token.revoke", "client.assign"} <= ACTIONS


def test_store_outage_does_not_raise_and_queued_events_are_written_later(state, clock, caplog):
    audit = AuditLog(state, clock, wall_time=lambda: T0, retry_interval_s=5.0)
    state.down = True
    with caplog.at_level(logging.INFO):
        for i in range(3):
            audit.record("session.stop", subject="a", role="admin", peer="p", target=f"s{i}", outcome="ok")
    assert state.attempts == 1  # no retry before the interval: a down store does not slow every request
    assert audit.pending == 3
    assert len(_lines(caplog)) == 3  # the log line is written either way
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "state store unreachable" in warnings[0].getMessage()

    state.down = False
    clock.advance(5.0)
    audit.record("session.stop", subject="a", role="admin", peer="p", target="s3", outcome="ok")
    assert audit.pending == 0
    assert [e.target for e in state.list_audit()] == ["s3", "s2", "s1", "s0"]


def test_flush_retries_now_and_the_queue_is_bounded(state, clock, caplog):
    audit = AuditLog(state, clock, wall_time=lambda: T0, max_pending=3)
    state.down = True
    for i in range(5):
        audit.record("model.upload", subject="a", role="admin", peer="p", target=f"m{i}", outcome="ok")
    assert (audit.pending, audit.dropped) == (3, 2)
    assert audit.flush() == 3  # still down: still queued
    state.down = False
    with caplog.at_level(logging.WARNING):
        assert audit.flush() == 0
    assert [e.target for e in state.list_audit()] == ["m4", "m3", "m2"]  # the oldest were dropped
    assert any("2 audit events were dropped" in r.getMessage() for r in caplog.records)


def test_without_a_state_store_it_only_logs(clock, caplog):
    audit = AuditLog(None, clock)
    with caplog.at_level(logging.INFO, logger="fedn.audit"):
        audit.record("update.rejected", subject="c1", role="client", peer="p", target="r1", outcome="refused")
    assert len(_lines(caplog)) == 1
    assert (audit.pending, audit.flush(), audit.prune()) == (0, 0, 0)


def test_prune_keeps_the_retention_window(state, clock):
    now = [T0]
    audit = AuditLog(state, clock, wall_time=lambda: now[0])
    audit.record("token.issue", subject="a", role="admin", peer="p", target="old", outcome="ok")
    now[0] = T0 + DEFAULT_RETENTION_DAYS * 86400
    audit.record("token.issue", subject="a", role="admin", peer="p", target="new", outcome="ok")
    now[0] += 1.0
    assert audit.prune() == 1
    assert [e.target for e in state.list_audit()] == ["new"]
    with pytest.raises(InvalidArgument):
        audit.prune(0)
    state.down = True  # prune does not touch append_audit; a failing delete is logged, not raised
    state.close()
    assert audit.prune(1.0) == 0


def test_threads_recording_at_once_lose_nothing(state, clock):
    audit = AuditLog(state, clock)

    def work(n: int) -> None:
        for i in range(50):
            audit.record("client.assign", subject=f"c{n}", role="client", peer="p", target=f"{n}-{i}", outcome="ok")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert audit.pending == 0
    events = state.list_audit(limit=1000)
    assert len({e.target for e in events}) == 400
    assert len({e.time for e in events}) == 400
