"""Each audited action at the reducer leaves one event with its subject and outcome, and no token."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from fedn.auth.tokens import Role
from fedn.codec import encode_model
from fedn.errors import ChecksumMismatch
from tests.integration.test_authz import _token, api, keys  # noqa: F401 - fixtures


def _bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_one_event_per_audited_action_with_subject_and_outcome_and_no_token(api, keys, caplog):  # noqa: F811
    client, ctx = api
    _, issuer = keys
    admin = _token(issuer, Role.ADMIN, "alice")
    combiner = _token(issuer, Role.COMBINER, "combiner-0")
    caplog.set_level(logging.INFO, logger="fedn.audit")

    blob = encode_model({"w": np.ones(3, np.float32)})
    uploaded = client.post("/api/v1/models", data=blob, headers=_bearer(admin), content_type="application/octet-stream")
    assert uploaded.status_code == 201, uploaded.get_json()
    model_id = uploaded.get_json()["id"]
    assert client.get(f"/api/v1/models/{model_id}/download", headers=_bearer(admin)).status_code == 200
    session = client.post("/api/v1/sessions", json={"rounds": 1}, headers=_bearer(admin))
    assert session.status_code == 201, session.get_json()
    register = {"id": "combiner-0", "name": "combiner-0", "address": "127.0.0.1:1"}
    assert client.post("/api/v1/combiners", json=register, headers=_bearer(combiner)).status_code == 200
    issued = client.post("/api/v1/tokens", json={"role": "client", "subject": "c-1"}, headers=_bearer(admin))
    assert issued.status_code == 201
    new_token, token_id = issued.get_json()["token"], issued.get_json()["id"]
    assert client.post(f"/api/v1/tokens/{token_id}/revoke", headers=_bearer(admin)).status_code == 200
    assert client.get("/api/v1/sessions", headers=_bearer(new_token)).status_code == 401  # revoked: denied
    assert client.post("/api/v1/sessions", json={}, headers=_bearer(combiner)).status_code == 403

    events = ctx.state.list_audit(limit=100)
    by_action: dict[str, list] = {}
    for event in events:
        by_action.setdefault(event.action, []).append(event)
    expected = {
        "model.upload": ("alice", "ok"),
        "model.download": ("alice", "ok"),
        "session.create": ("alice", "ok"),
        "combiner.register": ("combiner-0", "ok"),
        "token.issue": ("alice", "ok"),
        "token.revoke": ("alice", "ok"),
    }
    for action, (subject, outcome) in expected.items():
        assert [(e.subject, e.outcome) for e in by_action.get(action, [])] == [(subject, outcome)], action
    denied = by_action["auth.denied"]
    assert sorted((e.subject, e.outcome) for e in denied) == [("", "denied"), ("combiner-0", "denied")]
    assert all(e.peer for e in events)
    stored = json.dumps([e.model_dump() for e in events])
    lines = [r.getMessage() for r in caplog.records if r.name == "fedn.audit"]
    assert len(lines) == len(events)
    for token in (admin, combiner, new_token):
        for part in token.split("."):
            assert part not in stored and all(part not in line for line in lines)


def test_a_tampered_model_is_refused_on_download(api, keys):  # noqa: F811
    client, ctx = api
    _, issuer = keys
    admin = _bearer(_token(issuer, Role.ADMIN, "alice"))
    blob = encode_model({"w": np.ones(64, np.float32)})
    record = client.post("/api/v1/models", data=blob, headers=admin, content_type="application/octet-stream").get_json()
    ctx.models.put(record["key"], encode_model({"w": np.zeros(64, np.float32)}))  # same size, other values
    with pytest.raises(ChecksumMismatch):
        client.get(f"/api/v1/models/{record['id']}/download", headers=admin).get_data()


@pytest.mark.parametrize("path", ["/api/v1/models/..", "/api/v1/models/..%2Fpartials%2Fr%2Fc", "/api/v1/models/a@b"])
def test_traversal_in_a_model_id_is_refused(api, keys, path):  # noqa: F811
    client, _ = api
    _, issuer = keys
    answer = client.get(path, headers=_bearer(_token(issuer, Role.ADMIN, "alice")))
    assert answer.status_code in (400, 404), answer.status_code


def test_the_api_client_checks_a_download_against_its_record():
    import hashlib

    import httpx

    from fedn.api_client import ReducerAPI

    good, bad = encode_model({"w": np.ones(4, np.float32)}), encode_model({"w": np.zeros(4, np.float32)})
    record = {
        "id": "m1",
        "key": "models/m1.safetensors",
        "sha256": hashlib.sha256(good).hexdigest(),
        "size_bytes": len(good),
        "num_parameters": 4,
    }

    def serve(body: bytes):
        def handler(request: httpx.Request) -> httpx.Response:
            return (
                httpx.Response(200, content=body)
                if request.url.path.endswith("/download")
                else httpx.Response(200, json=record)
            )

        return handler

    reducer = ReducerAPI("http://reducer.invalid")
    reducer._http = httpx.Client(transport=httpx.MockTransport(serve(good)))
    assert reducer.download_model("m1") == good
    reducer._http = httpx.Client(transport=httpx.MockTransport(serve(bad)))
    with pytest.raises(ChecksumMismatch, match="m1"):
        reducer.download_model("m1")


def test_a_combiners_audit_events_reach_the_reducers_store(api, keys):  # noqa: F811
    client, ctx = api
    _, issuer = keys
    headers = _bearer(_token(issuer, Role.COMBINER, "combiner-0"))
    register = {"id": "combiner-0", "name": "combiner-0", "address": "127.0.0.1:1"}
    assert client.post("/api/v1/combiners", json=register, headers=headers).status_code == 200
    event = {"time": 1.7e9, "action": "auth.denied", "outcome": "denied", "peer": "ipv4:10.0.0.9:1234",
             "target": "/fedn.v1.Combiner/RunRound", "detail": "no token"}  # fmt: skip
    beat = {"client_ids": [], "audit": [event]}
    assert client.put("/api/v1/combiners/combiner-0/heartbeat", json=beat, headers=headers).status_code == 200
    (stored,) = ctx.state.list_audit(action="auth.denied")
    before = ctx.state.list_audit()
    assert (stored.target, stored.peer, stored.time) == ("combiner-0: /fedn.v1.Combiner/RunRound", event["peer"], 1.7e9)
    unknown = {"client_ids": [], "audit": [{**event, "action": "drop.tables"}]}  # say, from a newer combiner
    answer = client.put("/api/v1/combiners/combiner-0/heartbeat", json=unknown, headers=headers)
    assert answer.status_code == 200 and len(ctx.state.list_audit()) == len(before)  # skipped, not stored
    too_many = {"client_ids": [], "audit": [event] * 101}
    assert client.put("/api/v1/combiners/combiner-0/heartbeat", json=too_many, headers=headers).status_code == 400


def test_a_combiner_ships_its_events_with_heartbeats_and_keeps_them_when_the_reducer_is_away():
    from fedn.audit import AuditLog
    from fedn.clock import ManualClock

    log = AuditLog(None, ManualClock(), ship=True, max_pending=3)
    for i in range(4):
        log.record("round.run", subject="reducer", role="reducer", peer="p", target=f"round {i}", outcome="ok")
    first = log.take(2)
    assert [e.target for e in first] == ["round 1", "round 2"]  # the oldest beyond max_pending was dropped
    log.give_back(first)  # the heartbeat failed
    assert [e.target for e in log.take(10)] == ["round 1", "round 2", "round 3"]
    assert log.take(10) == []
    assert AuditLog(None, ManualClock()).take(10) == []  # a log that does not ship keeps nothing


def test_only_an_admins_upload_is_received_the_token_is_checked_on_the_request_head(tmp_path):
    import socket

    import httpx

    from fedn.auth.tokens import TokenIssuer, generate_signing_key, load_private_key
    from reducer.server import ReducerServer
    from reducer.settings import ReducerSettings

    key_path, _ = generate_signing_key(tmp_path / "keys")
    issuer = TokenIssuer(load_private_key(key_path))
    settings = ReducerSettings(
        host="127.0.0.1",
        port=0,
        state=f"sqlite:///{tmp_path / 'state.db'}",
        models=(tmp_path / "m").as_uri(),
        token_signing_key=str(key_path),
    )
    server = ReducerServer(settings)
    server.start()
    url = f"{server.url}/api/v1/models"
    big = b"\0" * (4 << 20)  # over max_json_bytes: received only for an admin
    try:
        with httpx.Client(timeout=10) as http:
            assert http.post(url, content=big).status_code == 401
            # a head announcing 100 MB and no body: answered at once, nothing of the body awaited
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
                sock.sendall(b"POST /api/v1/models HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n")
                assert sock.recv(4096).startswith(b"HTTP/1.1 401")
            viewer = _bearer(_token(issuer, Role.VIEWER, "v"))
            assert http.post(url, content=big, headers=viewer).status_code == 403
            admin = _bearer(_token(issuer, Role.ADMIN, "alice"))
            blob = encode_model({"w": np.ones(1 << 20, np.float32)})  # 4 MiB
            answer = http.post(url, content=blob, headers={**admin, "Content-Type": "application/octet-stream"})
            assert answer.status_code == 201, answer.text
    finally:
        server.stop()
