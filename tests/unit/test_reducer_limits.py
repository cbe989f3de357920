"""Limits at the reducer: server-optimizer parameters, session requests, sessions queued, heartbeats,
registered combiners, and the global model's sha256 in every plan and announcement."""

from __future__ import annotations

import numpy as np
import pytest

from fedn.aggregation.server_optimizers import make_server_optimizer
from fedn.clock import ManualClock
from fedn.errors import FailedPrecondition, InvalidArgument, NotFound
from fedn.models import save_model
from fedn.records import Session, SessionStatus
from fedn.session_options import check_session_options
from reducer.api import ApiContext
from reducer.app import create_app
from reducer.controller import check_session_capacity
from reducer.registry import CombinerRegistry
from reducer.requests import HeartbeatRequest, SessionRequest, parse
from tests.unit.test_reducer_async import _setup as _async_setup
from tests.unit.test_reducer_controller import _setup as _sync_setup


@pytest.mark.parametrize(
    ("strategy", "config", "field"),
    [
        ("fedadam", {"eta": 1e308}, "eta"),
        ("fedavgm", {"eta": 1e308}, "eta"),
        ("fedyogi", {"eta": float("inf")}, "eta"),
        ("fedadagrad", {"eta": float("nan")}, "eta"),
        ("fedadam", {"eta_l": 1e308}, "eta_l"),
        ("fedadam", {"tau": 1e-300}, "tau"),  # tau² underflows to 0: the first step divides by ~0
        ("fedadagrad", {"tau": 1e308}, "tau"),
        ("fedprox", {"mu": 1e308}, "mu"),
        ("fedavgm", {"momentum": 1.0}, "momentum"),
        ("fedyogi", {"beta2": 1.0}, "beta2"),
    ],
)
def test_server_optimizer_parameters_out_of_bounds_are_refused_naming_the_bound(strategy, config, field):
    with pytest.raises(InvalidArgument) as caught:
        make_server_optimizer(strategy, config)
    message = caught.value.message
    assert message.startswith(f"invalid config for strategy {strategy!r}: {field}: "), message
    assert "allowed:" in message  # each bound is stated in the error
    with pytest.raises(InvalidArgument):
        check_session_options(
            aggregator="fedavg", aggregator_params={}, strategy=strategy, strategy_params=config, min_clients=1
        )


@pytest.mark.parametrize(
    ("strategy", "config"),
    [
        ("fedadam", {"eta": 1.0, "tau": 1e-9, "eta_l": 0.1}),  # Flower's FedAdam defaults
        ("fedavgm", {"eta": 1.0, "momentum": 0.9}),
        ("fedprox", {"mu": 1.0}),
        ("fedyogi", {"eta": 0.01, "beta1": 0.0, "beta2": 0.999, "tau": 1e-3}),
    ],
)
def test_usual_server_optimizer_parameters_are_accepted(strategy, config):
    make_server_optimizer(strategy, config)


@pytest.mark.parametrize(
    "field",
    [
        {"rounds": 100_001},
        {"min_clients": 1_000_001},
        {"round_timeout_s": 7 * 86400 + 1},
        {"buffer_size": 100_001},
        {"max_staleness": 10**9 + 1},
        {"staleness_exponent": 11.0},
        {"config": {f"k{i}": i for i in range(257)}},
    ],
)
def test_session_requests_have_upper_bounds(field):
    with pytest.raises(InvalidArgument, match=next(iter(field))):
        parse(SessionRequest, {"rounds": 1, **field})


def _session(state, status: SessionStatus) -> Session:
    session = Session(rounds=1, seed_model_id="m", model_id="m", status=status)
    state.put_session(session)
    return session


def test_at_most_max_pending_sessions_are_queued_or_running(stores):
    state, _ = stores
    for status in (SessionStatus.DONE, SessionStatus.FAILED, SessionStatus.RUNNING):
        _session(state, status)
    check_session_capacity(state, 2)  # one running: room for one more
    _session(state, SessionStatus.PENDING)
    with pytest.raises(FailedPrecondition, match="2 sessions are pending or running; at most 2"):
        check_session_capacity(state, 2)
    check_session_capacity(state, 3)


def test_the_session_count_pages_past_the_newest_sessions(stores):
    state, _ = stores
    _session(state, SessionStatus.PENDING)  # the oldest
    for _ in range(1500):
        _session(state, SessionStatus.DONE)
    with pytest.raises(FailedPrecondition):
        check_session_capacity(state, 1)


def test_heartbeat_client_ids_are_bounded_and_match_the_id_pattern():
    assert parse(HeartbeatRequest, {"client_ids": [f"c{i}" for i in range(10_000)]}).client_ids[-1] == "c9999"
    for client_ids in (["\x00"], ["${}"], ["x" * 129], [f"c{i}" for i in range(100_001)]):
        with pytest.raises(InvalidArgument, match="client_ids"):
            parse(HeartbeatRequest, {"client_ids": client_ids})


def test_a_combiner_may_report_at_most_max_clients_per_combiner(stores):
    state, _ = stores
    registry = CombinerRegistry(state, combiner_timeout_s=10.0, clock=ManualClock(), max_clients_per_combiner=3)
    registry.register("a", "a", "a:1")
    registry.heartbeat("a", ["c1", "c2", "c3"])
    with pytest.raises(InvalidArgument, match="4 clients; at most 3"):
        registry.heartbeat("a", ["c1", "c2", "c3", "c4"])
    assert registry.client_ids("a") == ["c1", "c2", "c3"]  # the refused heartbeat changed nothing
    assert state.get_combiner("a").num_clients == 3


def test_at_most_max_combiners_are_registered_at_once(stores):
    state, _ = stores
    clock = ManualClock(100.0)
    registry = CombinerRegistry(state, combiner_timeout_s=10.0, clock=clock, max_combiners=2)
    registry.register("a", "a", "a:1")
    registry.register("b", "b", "b:1")
    registry.register("a", "a", "a:2")  # one that is registered may register again
    with pytest.raises(FailedPrecondition, match="2 combiners are live; at most 2"):
        registry.register("c", "c", "c:1")
    with pytest.raises(NotFound):
        state.get_combiner("c")
    clock.advance(11.0)
    registry.heartbeat("b", [])  # a missed its heartbeats: offline, its place is free
    registry.register("c", "c", "c:1")
    assert sorted(c.id for c in registry.live()) == ["b", "c"]


def test_offline_combiners_are_not_kept_in_memory_past_the_bound(stores):
    state, _ = stores
    clock = ManualClock(100.0)
    registry = CombinerRegistry(state, combiner_timeout_s=10.0, clock=clock, max_combiners=2)
    for i in range(50):  # ids cycled as each goes silent
        registry.register(f"x{i}", "x", "x:1")
        clock.advance(11.0)
    assert len(registry._combiners) <= 2 * 2


def test_every_sync_plan_names_the_sha256_of_its_global_model(stores):
    state, _ = stores
    controller, gateway, session, _, _ = _sync_setup(stores, {"a": (1.0, 10.0)}, min_clients=1, rounds=2)
    controller.run_session(session)
    plans = [p for _, p in gateway.plans]
    assert len(plans) == 2 and all(p.model_sha256 == state.get_model(p.model_id).sha256 for p in plans)


def test_every_async_plan_and_announcement_names_the_sha256_of_its_model(stores):
    state, _ = stores
    controller, gateway, session = _async_setup(stores, {"a": 1.0})
    controller.run_session(session)
    plans = [p for _, p in gateway.plans]
    assert plans and all(p.model_sha256 == state.get_model(p.model_id).sha256 for p in plans)
    announced = [a for _, a in gateway.announcements]
    assert announced and all(a.model_sha256 == state.get_model(a.model_id).sha256 for a in announced)


def test_the_api_refuses_a_session_past_max_pending_sessions_and_an_oversized_heartbeat(stores):
    state, models = stores
    state.put_model(save_model(models, {"w": np.zeros(2, np.float32)}))
    registry = CombinerRegistry(state, combiner_timeout_s=10.0, clock=ManualClock(), max_clients_per_combiner=3)
    registry.register("a", "a", "a:1")
    http = create_app(ApiContext(state, models, registry, None, max_pending_sessions=1)).test_client()
    assert http.post("/api/v1/sessions", json={"rounds": 1}).status_code == 201
    refused = http.post("/api/v1/sessions", json={"rounds": 1})
    assert refused.status_code == 409 and "max_pending_sessions" in refused.get_json()["detail"]
    assert len(state.list_sessions()) == 1
    too_many = http.put("/api/v1/combiners/a/heartbeat", json={"client_ids": ["c1", "c2", "c3", "c4"]})
    assert too_many.status_code == 400 and "max_clients_per_combiner" in too_many.get_json()["detail"]
    bad_id = http.put("/api/v1/combiners/a/heartbeat", json={"client_ids": ["${}"]})
    assert bad_id.status_code == 400 and state.get_combiner("a").num_clients == 0
