"""Who may call what, over every REST route and every RPC; and that callers act only as themselves.

The matrices are built from the OpenAPI document and the proto's descriptors, so a route or RPC added
without a rule in fedn.auth.policy fails here.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedn.audit import AuditLog
from fedn.auth.policy import GRPC_RULES, OPEN, REST_RULES
from fedn.auth.rpc import open_channel
from fedn.auth.tokens import Role, TokenIssuer, TokenVerifier, generate_signing_key, load_private_key
from fedn.clock import SystemClock
from fedn.codec import decode_model
from fedn.models import save_model
from fedn.records import CombinerRecord
from fedn.store.local import LocalModelStore
from fedn.store.sqlite import SQLiteStateStore
from fedn.v1 import fedn_pb2 as pb
from fedn.v1 import fedn_pb2_grpc as pb_grpc
from reducer.api import ApiContext
from reducer.app import create_app
from reducer.auth import ReducerAuth
from reducer.openapi import openapi_document
from reducer.registry import CombinerRegistry

_SUBJECT = "x-1"  # every path id in the matrix, and the subject of every token


@pytest.fixture
def keys(tmp_path: Path):
    key_path, _ = generate_signing_key(tmp_path / "keys")
    key = load_private_key(key_path)
    return key, TokenIssuer(key)


def _token(issuer: TokenIssuer, role: Role, subject: str = _SUBJECT) -> str:
    return issuer.issue(role, subject, 3600).token


def _expired(key, role: Role) -> str:
    return TokenIssuer(key, wall=lambda: time.time() - 10 * 86400).issue(role, _SUBJECT, 3600).token


@pytest.fixture
def api(tmp_path: Path, keys):
    key, issuer = keys
    state = SQLiteStateStore(str(tmp_path / "state.db"))
    models = LocalModelStore(str(tmp_path / "models"))
    auth = ReducerAuth(state, issuer, TokenVerifier(key.public_key()))
    registry = CombinerRegistry(state, combiner_timeout_s=30, clock=SystemClock())
    ctx = ApiContext(state, models, registry, None, auth=auth, audit=AuditLog(state, SystemClock()))
    app = create_app(ctx)
    yield app.test_client(), ctx
    state.close()


def _operations():
    for path, operations in openapi_document()["paths"].items():
        for method in operations:
            yield method.upper(), path


def _call(client, method: str, path: str, token: str | None):
    url = re.sub(r"\{[^}]+\}", _SUBJECT, path)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if method in ("POST", "PUT"):
        return client.open(url, method=method, json={}, headers=headers)
    return client.open(url, method=method, headers=headers)


def test_every_route_and_rpc_has_a_rule_and_every_rule_a_route(api):
    client, _ = api
    documented = set(_operations())
    assert documented == set(REST_RULES), "routes in the OpenAPI document and rules in fedn.auth.policy differ"
    served = set()
    for rule in client.application.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            served.add((method, re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)))
    assert served == documented, "served routes and documented routes differ"
    methods = {f"/fedn.v1.Combiner/{m.name}" for m in pb.DESCRIPTOR.services_by_name["Combiner"].methods}
    assert methods == set(GRPC_RULES)


@pytest.mark.parametrize("method,path", sorted(REST_RULES))
def test_rest_authorization_matrix(api, keys, method, path):
    client, ctx = api
    key, issuer = keys
    allowed = REST_RULES[(method, path)]
    if allowed == OPEN:
        assert _call(client, method, path, None).status_code not in (401, 403)
        return
    assert _call(client, method, path, None).status_code == 401
    assert _call(client, method, path, "not-a-token").status_code == 401
    for role in Role:
        answer = _call(client, method, path, _token(issuer, role))
        if role in allowed:
            assert answer.status_code not in (401, 403), (role, answer.get_json())
        else:
            assert answer.status_code == 403, (role, answer.status_code)
            assert answer.get_json()["error"] == "permission denied"
    some_allowed = sorted(allowed)[0]
    assert _call(client, method, path, _expired(key, some_allowed)).status_code == 401
    revoked = issuer.issue(some_allowed, _SUBJECT, 3600)
    ctx.state.put_token(_record(revoked))
    ctx.state.revoke_token(revoked.principal.token_id, by="test", at=time.time())
    ctx.auth.refresh_revocations(force=True)
    answer = _call(client, method, path, revoked.token)
    assert answer.status_code == 401 and "revoked" in answer.get_json()["detail"]


def _record(issued):
    from fedn.records import TokenRecord

    p = issued.principal
    return TokenRecord(
        id=p.token_id,
        subject=p.subject,
        role=p.role.value,
        issued_at=issued.issued_at,
        expires_at=p.expires_at,
        issued_by="test",
    )


def test_a_combiner_registers_and_moves_only_itself(api, keys):
    client, ctx = api
    _, issuer = keys
    ctx.state.put_combiner(CombinerRecord(id="combiner-0", name="combiner-0", address="10.0.0.1:12080"))
    attacker = _token(issuer, Role.COMBINER, "combiner-9")
    hijack = {"id": "combiner-0", "name": "combiner-0", "address": "6.6.6.6:1"}
    answer = client.post("/api/v1/combiners", json=hijack, headers={"Authorization": f"Bearer {attacker}"})
    assert answer.status_code == 403 and "combiner-9" in answer.get_json()["detail"]
    assert ctx.state.get_combiner("combiner-0").address == "10.0.0.1:12080"
    beat = client.put(
        "/api/v1/combiners/combiner-0/heartbeat",
        json={"num_clients": 0, "client_ids": []},
        headers={"Authorization": f"Bearer {attacker}"},
    )
    assert beat.status_code == 403
    own = _token(issuer, Role.COMBINER, "combiner-0")
    moved = {"id": "combiner-0", "name": "combiner-0", "address": "10.0.0.2:12080"}
    assert client.post("/api/v1/combiners", json=moved, headers={"Authorization": f"Bearer {own}"}).status_code == 200
    assert ctx.state.get_combiner("combiner-0").address == "10.0.0.2:12080"
    events = ctx.state.list_audit(action="combiner.register")
    assert [e.subject for e in events] == ["combiner-0"] and events[0].outcome == "ok"
    denied = ctx.state.list_audit(action="auth.denied")  # the hijack and the heartbeat, by the attacker
    assert [(e.subject, e.outcome) for e in denied] == [("combiner-9", "denied")] * 2
    assert all(part not in e.model_dump_json() for e in denied for part in attacker.split("."))


def test_a_client_is_assigned_as_its_token_subject(api, keys):
    client, ctx = api
    _, issuer = keys
    ctx.registry.register("combiner-0", "combiner-0", "127.0.0.1:1")
    token = _token(issuer, Role.CLIENT, "client-a")
    headers = {"Authorization": f"Bearer {token}"}
    as_other = client.post("/api/v1/clients/assign", json={"name": "a", "client_id": "client-b"}, headers=headers)
    assert as_other.status_code == 403
    answer = client.post("/api/v1/clients/assign", json={"name": "a"}, headers=headers)
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["client_id"] == "client-a"


# -- gRPC -----------------------------------------------------------------------------------------


@pytest.fixture
def secured(start_combiner, model_store, keys, tmp_path: Path):
    key, issuer = keys
    pub = tmp_path / "keys" / "token-signing.pub"
    server, _ = start_combiner(model_store, token_public_key=str(pub))
    channels: list[grpc.Channel] = []

    def stub(token: str | None) -> pb_grpc.CombinerStub:
        channel = open_channel(f"127.0.0.1:{server.port}", token=token)
        channels.append(channel)
        return pb_grpc.CombinerStub(channel)

    yield server, stub, issuer, key
    for channel in channels:
        channel.close()


def _invoke(stub: pb_grpc.CombinerStub, name: str) -> grpc.StatusCode:
    method = pb.DESCRIPTOR.services_by_name["Combiner"].methods_by_name[name]
    request = getattr(pb, method.input_type.name)()
    call = getattr(stub, name)
    try:
        if method.client_streaming:
            call(iter([request]), timeout=5)
        elif method.server_streaming:
            next(iter(call(request, timeout=5)))
        else:
            call(request, timeout=5)
    except grpc.RpcError as exc:
        return exc.code()
    except StopIteration:
        pass
    return grpc.StatusCode.OK


@pytest.mark.parametrize("full_method", sorted(GRPC_RULES))
def test_grpc_authorization_matrix(secured, full_method):
    server, stub, issuer, key = secured
    name = full_method.rsplit("/", 1)[-1]
    allowed = GRPC_RULES[full_method]
    assert _invoke(stub(None), name) == grpc.StatusCode.UNAUTHENTICATED
    assert _invoke(stub("garbage"), name) == grpc.StatusCode.UNAUTHENTICATED
    for role in Role:
        code = _invoke(stub(_token(issuer, role)), name)
        if role in allowed:
            assert code not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED), role
        else:
            assert code == grpc.StatusCode.PERMISSION_DENIED, (role, code)
    some_allowed = sorted(allowed)[0]
    assert _invoke(stub(_expired(key, some_allowed)), name) == grpc.StatusCode.UNAUTHENTICATED
    revoked = issuer.issue(some_allowed, _SUBJECT, 3600)
    server.verifier.set_revoked([revoked.principal.token_id])
    assert _invoke(stub(revoked.token), name) == grpc.StatusCode.UNAUTHENTICATED


def test_a_client_acts_only_as_itself_and_holds_one_stream(secured, model_store, caplog):
    from tests.integration.test_combiner_grpc import FakeClient, _plan, _start_round, _wait_connected

    server, stub, issuer, _ = secured
    caplog.set_level(logging.INFO, logger="fedn.audit")
    arrays = {"w": np.ones((4, 3), np.float32)}
    record = save_model(model_store, arrays)
    victim = FakeClient(stub(_token(issuer, Role.CLIENT, "victim")), "victim")
    _wait_connected(server, 1)
    thief = stub(_token(issuer, Role.CLIENT, "thief"))
    with pytest.raises(grpc.RpcError) as refused:
        next(iter(thief.TaskStream(pb.TaskStreamRequest(client_id="victim", client_name="x"), timeout=5)))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    second = stub(_token(issuer, Role.CLIENT, "victim"))  # the same identity again: a stolen token, say
    with pytest.raises(grpc.RpcError) as twice:
        next(iter(second.TaskStream(pb.TaskStreamRequest(client_id="victim", client_name="x"), timeout=5)))
    assert twice.value.code() == grpc.StatusCode.ALREADY_EXISTS
    reducer = stub(_token(issuer, Role.REDUCER, "reducer"))
    thread, holder = _start_round(reducer, _plan(record.id, timeout_s=20))
    victim.wait_task()
    for attempt in (
        lambda: thief.RequestUpload(pb.UploadRequest(round_id="r1", client_id="victim", payload_bytes=48), timeout=5),
        lambda: thief.ReportFailure(pb.ReportFailureRequest(round_id="r1", client_id="victim", error="x"), timeout=5),
    ):
        with pytest.raises(grpc.RpcError) as exc:
            attempt()
        assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    forged = FakeClient.__new__(FakeClient)
    forged.stub, forged.client_id = thief, "victim"
    with pytest.raises(grpc.RpcError) as upload:
        forged.upload("r1", {"w": np.full((4, 3), 9.0, np.float32)})
    assert upload.value.code() == grpc.StatusCode.PERMISSION_DENIED
    victim.upload("r1", {"w": np.full((4, 3), 2.0, np.float32)})
    thread.join(30)
    result = holder["result"]
    assert result.num_updates == 1 and result.failures == []
    denials = [r.getMessage() for r in caplog.records if r.name == "fedn.audit" and '"auth.denied"' in r.getMessage()]
    assert len(denials) == 4 and all('"subject": "thief"' in line for line in denials)  # stream, 2 calls, upload
    partial = decode_model(model_store.get(result.partial_key))  # the victim's update alone
    np.testing.assert_array_equal(partial["w"], np.full((4, 3), 2.0))
    victim.close()


def test_under_mutual_tls_the_certificate_must_name_the_token_subject(start_combiner, model_store, keys, tmp_path):
    from fedn.tls import TLSFiles, create_ca, issue_certificate

    _, issuer = keys
    ca, _ = create_ca(tmp_path / "ca")
    server_cert, server_key = issue_certificate(tmp_path / "ca", "combiner-x", ["127.0.0.1"], tmp_path / "certs")
    settings = {
        "token_public_key": str(tmp_path / "keys" / "token-signing.pub"),
        "tls_cert": str(server_cert),
        "tls_key": str(server_key),
        "client_ca": str(ca),
    }
    server, _ = start_combiner(model_store, **settings)
    cert, key = issue_certificate(tmp_path / "ca", "client-a", [], tmp_path / "certs")
    tls = TLSFiles(cert_file=str(cert), key_file=str(key), ca_file=str(ca))

    def open_stream(subject: str) -> grpc.StatusCode:
        channel = open_channel(f"127.0.0.1:{server.port}", tls=tls, token=_token(issuer, Role.CLIENT, subject))
        try:
            call = pb_grpc.CombinerStub(channel).TaskStream(
                pb.TaskStreamRequest(client_id=subject, client_name=subject), timeout=5
            )
            next(iter(call))
            call.cancel()
            return grpc.StatusCode.OK
        except grpc.RpcError as exc:
            return exc.code()
        finally:
            channel.close()

    assert open_stream("client-b") == grpc.StatusCode.PERMISSION_DENIED  # a stolen token without its certificate
    assert open_stream("client-a") == grpc.StatusCode.OK
