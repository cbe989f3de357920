"""The reducer's REST API: every route, and JSON 4xx errors for bad input, never a stack trace; and its
gateway to the combiners keeping a combiner's gRPC status over a real channel."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedn.api_client import ReducerAPI
from fedn.codec import encode_model
from fedn.errors import DeadlineExceeded, InvalidArgument, NotFound
from fedn.records import CombinerRecord, NodeStatus, RoundPlan
from fedn.store import LocalModelStore, SQLiteStateStore
from fedn.v1 import fedn_pb2_grpc as pb_grpc
from reducer.api import ApiContext
from reducer.app import create_app
from reducer.gateway import GrpcCombinerGateway
from reducer.registry import CombinerRegistry
from reducer.server import ReducerServer
from reducer.settings import ReducerSettings

MODEL = {"w": np.ones((3, 2), np.float32), "b": np.zeros(2, np.float32)}


@pytest.fixture
def ctx(tmp_path: Path) -> ApiContext:
    state = SQLiteStateStore(":memory:")
    registry = CombinerRegistry(state, combiner_timeout_s=30.0)
    return ApiContext(state, LocalModelStore(tmp_path / "models"), registry, controller=None, max_model_bytes=4096)


@pytest.fixture
def http(ctx: ApiContext):
    return create_app(ctx).test_client()


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"error", "detail"}, body
    assert "Traceback" not in body["detail"]
    return body


def _upload(http, model=MODEL) -> dict:
    response = http.post("/api/v1/models", data=encode_model(model), content_type="application/octet-stream")
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()


def test_health_and_openapi_cover_every_route(http, ctx):
    assert http.get("/api/v1/health").get_json()["status"] == "ok"
    doc = http.get("/api/v1/openapi.json").get_json()
    assert doc["openapi"].startswith("3.1")
    app = create_app(ctx)
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1"):
            continue
        path = rule.rule.replace("<", "{").replace(">", "}")
        assert path in doc["paths"], f"{path} is not in the OpenAPI document"
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert method.lower() in doc["paths"][path], f"{method} {path} is not documented"
    assert {"Session", "Round", "ModelRecord", "Error"} <= set(doc["components"]["schemas"])


def test_models_upload_list_get_download(http):
    record = _upload(http)
    assert record["num_parameters"] == 8
    assert [m["id"] for m in http.get("/api/v1/models").get_json()["items"]] == [record["id"]]
    assert http.get(f"/api/v1/models/{record['id']}").get_json()["sha256"] == record["sha256"]
    blob = http.get(f"/api/v1/models/{record['id']}/download").get_data()
    assert blob == encode_model(MODEL)


def test_bad_models_are_refused(http):
    _error(http.post("/api/v1/models", data=b"garbage", content_type="application/octet-stream"), 400)
    nan = {"w": np.array([1.0, np.nan], np.float32)}
    assert "NaN" in _error(http.post("/api/v1/models", data=encode_model(nan)), 400)["detail"]
    big = {"w": np.zeros(5000, np.float32)}
    _error(http.post("/api/v1/models", data=encode_model(big), content_type="application/octet-stream"), 413)
    _error(http.get("/api/v1/models/nope"), 404)
    _error(http.get("/api/v1/models/nope/download"), 404)


def test_sessions_and_rounds(http):
    _error(http.post("/api/v1/sessions", json={"rounds": 2}), 409)  # no seed model yet
    seed = _upload(http)
    response = http.post("/api/v1/sessions", json={"rounds": 2, "min_clients": 2, "config": {"epochs": 1, "lr": 0.1}})
    assert response.status_code == 201
    session = response.get_json()
    assert session["seed_model_id"] == seed["id"] and session["status"] == "pending"
    assert http.get(f"/api/v1/sessions/{session['id']}").get_json()["config"] == {"epochs": 1, "lr": 0.1}
    assert http.get("/api/v1/sessions").get_json()["count"] == 1
    empty = {"items": [], "count": 0, "total": 0, "next_cursor": None}
    assert http.get(f"/api/v1/sessions/{session['id']}/rounds").get_json() == empty
    _error(http.get("/api/v1/sessions/nope"), 404)
    _error(http.get("/api/v1/sessions/nope/rounds"), 404)
    _error(http.get("/api/v1/rounds/nope"), 404)
    _error(http.post("/api/v1/sessions", json={"rounds": 1, "model_id": "nope"}), 404)
    body = {"rounds": 3, "mode": "async", "buffer_size": 4, "max_staleness": 8}
    created = http.post("/api/v1/sessions", json=body).get_json()
    assert (created["mode"], created["buffer_size"], created["max_staleness"], created["staleness_exponent"]) == (
        "async",
        4,
        8,
        0.5,
    )


@pytest.mark.parametrize(
    "body",
    [
        {"rounds": 0},
        {"rounds": "five"},
        {"rounds": 2, "round_timeout_s": -1},
        {"rounds": 2, "min_clients": 0},
        {"rounds": 2, "aggregator": "fedmagic"},
        {"rounds": 2, "config": {"epochs": [1, 2]}},
        {"rounds": 2, "config": "epochs=1"},
        {"rounds": 2, "surprise": True},
        {"rounds": 2, "strategy": "fedmagic"},
        {"rounds": 2, "aggregator": "trimmed_mean", "aggregator_config": {"beta": 0.7}},
        {"rounds": 2, "aggregator": "krum", "aggregator_config": {"f": 2}, "min_clients": 3},
        {"rounds": 2, "strategy": "fedadam", "strategy_config": {"eta": -1}},
        {"rounds": 2, "strategy": "fedyogi", "strategy_config": {"beta2": 1.0}},
        {"rounds": 2, "strategy": "fedadam", "strategy_config": {"not_a_parameter": 1}},
        {"rounds": 2, "mode": "eventually"},
        {"rounds": 2, "mode": "async", "buffer_size": 0},
        {"rounds": 2, "mode": "async", "staleness_exponent": -0.5},
        {"rounds": 2, "mode": "async", "max_staleness": -1},
        {"rounds": 2, "mode": "async", "aggregator": "median"},
        {"rounds": 2, "buffer_size": 5},  # an async option in a sync session
        {},
    ],
)
def test_invalid_session_parameters_are_400(http, body):
    _upload(http)
    _error(http.post("/api/v1/sessions", json=body), 400)


def test_malformed_and_non_object_json_are_400(http):
    _upload(http)
    body = _error(http.post("/api/v1/sessions", data="{not json", content_type="application/json"), 400)
    assert "JSON" in body["detail"]
    _error(http.post("/api/v1/sessions", data=json.dumps([1, 2]), content_type="application/json"), 400)
    _error(http.post("/api/v1/clients/assign", data="nope", content_type="application/json"), 400)


def test_bad_query_args_unknown_routes_and_methods(http):
    _error(http.get("/api/v1/sessions?limit=0"), 400)
    _error(http.get("/api/v1/models?limit=abc"), 400)
    _error(http.get("/api/v1/clients?offset=-1"), 400)
    _error(http.get("/api/v1/nothing-here"), 404)
    _error(http.delete("/api/v1/sessions"), 405)


def test_combiners_clients_and_assignment(http):
    _error(http.post("/api/v1/clients/assign", json={"name": "c"}), 503)  # no combiner yet
    for cid in ("combiner-a", "combiner-b"):
        assert http.post("/api/v1/combiners", json={"id": cid, "address": f"{cid}:1"}).status_code == 200
    _error(http.post("/api/v1/combiners", json={"id": "bad id!", "address": "x:1"}), 400)
    _error(http.put("/api/v1/combiners/unknown/heartbeat", json={"client_ids": []}), 404)
    assigned = [http.post("/api/v1/clients/assign", json={"name": f"c{i}"}).get_json() for i in range(4)]
    assert sorted(a["combiner_id"] for a in assigned) == ["combiner-a", "combiner-a", "combiner-b", "combiner-b"]
    again = http.post("/api/v1/clients/assign", json={"name": "c0", "client_id": assigned[0]["client_id"]}).get_json()
    assert again["client_id"] == assigned[0]["client_id"]
    a_clients = [a["client_id"] for a in assigned if a["combiner_id"] == "combiner-a"]
    beat = http.put("/api/v1/combiners/combiner-a/heartbeat", json={"num_clients": 2, "client_ids": a_clients})
    assert beat.get_json() == {"status": "online", "num_clients": 2, "shed": 0, "revoked": []}
    clients = {c["id"]: c for c in http.get("/api/v1/clients").get_json()["items"]}
    assert all(clients[c]["status"] == NodeStatus.ONLINE for c in a_clients)
    assert http.get("/api/v1/combiners/combiner-a").get_json()["num_clients"] == 2
    assert http.get(f"/api/v1/clients/{a_clients[0]}").get_json()["combiner_id"] == "combiner-a"
    _error(http.get("/api/v1/clients/nope"), 404)
    _error(http.get("/api/v1/combiners/nope"), 404)
    assert http.get("/api/v1/health").get_json()["clients_online"] == 2


def test_real_server_with_the_api_client(tmp_path: Path):
    settings = ReducerSettings(
        host="127.0.0.1", port=0, state=f"sqlite:///{tmp_path / 'state.db'}", models=(tmp_path / "models").as_uri()
    )
    server = ReducerServer(settings)
    server.start()
    try:
        with ReducerAPI(server.url) as api:
            assert api.health()["status"] == "ok"
            api.register_combiner("combiner-x", "127.0.0.1:5")
            assignment = api.assign_client("client-1")
            api.combiner_heartbeat("combiner-x", [assignment["client_id"]])
            assert [c.status for c in api.list_clients()] == [NodeStatus.ONLINE]
            seed = api.upload_model(encode_model(MODEL))
            session = api.start_session(rounds=1, round_timeout_s=5.0, model_id=seed.id)
            assert api.get_session(session.id).seed_model_id == seed.id
            with pytest.raises(InvalidArgument, match="rounds"):
                api.start_session(rounds=0)
            with pytest.raises(NotFound):
                api.get_round("nope")
            assert api.download_model(seed.id) == encode_model(MODEL)
    finally:
        server.stop()


class _RefusingCombiner(pb_grpc.CombinerServicer):
    """Refuses every plan with INVALID_ARGUMENT, or never answers (``stall``): the deadline runs out."""

    def __init__(self, stall: bool) -> None:
        self._stall = stall

    def RunRound(self, request, context):
        if self._stall:
            ended = threading.Event()
            context.add_callback(ended.set)  # runs when the client's deadline ends the call
            ended.wait(10)
            return None
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "aggregator 'nope' is not registered")


@pytest.mark.parametrize(("stall", "expected"), [(False, InvalidArgument), (True, DeadlineExceeded)])
def test_the_gateway_keeps_the_status_a_real_combiner_gave(stall, expected):
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_CombinerServicer_to_server(_RefusingCombiner(stall), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    gateway = GrpcCombinerGateway()
    try:
        combiner = CombinerRecord(id="c1", name="c1", address=f"127.0.0.1:{port}")
        plan = RoundPlan(round_id="r", session_id="s", round_index=1, model_id="m", aggregator="nope")
        with pytest.raises(expected) as raised:
            gateway.run_round(combiner, plan, 0.5)
        assert type(raised.value) is expected
        assert raised.value.message.startswith(f"combiner c1 at 127.0.0.1:{port}: {expected.grpc_status.name}: ")
    finally:
        gateway.close()
        server.stop(grace=None)
