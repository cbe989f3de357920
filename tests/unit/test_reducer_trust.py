"""The reducer trusts nothing a combiner reports (DESIGN §9): a fake combiner's foreign partial key,
round id, combiner id, weight, oversized record or non-finite partial is that combiner's failure, and
the global model is unchanged by it; every new global model is finite; a tampered blob is refused."""

from __future__ import annotations

import numpy as np
import pytest

from fedn.codec import decode_model, encode_model
from fedn.errors import ChecksumMismatch, InvalidArgument
from fedn.models import load_verified, model_key, partial_key, save_model
from fedn.records import (
    ClientFailureRecord,
    CombinerRecord,
    MetricSummary,
    Round,
    RoundPlan,
    RoundResult,
    RoundStatus,
    SessionStatus,
)
from reducer.merging import Merger
from reducer.results import MAX_ERROR_CHARS, MAX_ROUND_FAILURES
from tests.unit.test_reducer_async import AsyncGateway, _BFirstAsyncGateway
from tests.unit.test_reducer_async import _setup as _async_setup
from tests.unit.test_reducer_controller import BFirst, FakeGateway
from tests.unit.test_reducer_controller import _setup as _sync_setup

_SYNC = {"a": (1.0, 10.0), "b": (4.0, 30.0)}


def _w(models, model_id: str) -> np.ndarray:
    return decode_model(models.get(model_key(model_id)))["w"]


def _stored_float64_model(stores, value: float) -> str:
    """A model anyone could have uploaded, shaped like a partial (float64): its id."""
    state, models = stores
    record = save_model(models, {"w": np.full(4, value)})
    state.put_model(record)
    return record.id


def _tamper(stores, value: float):
    """What the lying combiner b changes in its honest result, by name."""

    def foreign_partial_key(result, plan):
        return {"partial_key": model_key(_stored_float64_model(stores, value))}

    def foreign_round_id(result, plan):  # a partial it stored for another round
        stores[1].put(partial_key("r-elsewhere", "b"), encode_model({"w": np.full(4, value)}))
        return {"round_id": "r-elsewhere", "partial_key": partial_key("r-elsewhere", "b")}

    def foreign_combiner_id(result, plan):  # claims to be a, to have its partial counted twice
        return {"combiner_id": "a"}

    def huge_weight(result, plan):
        return {"total_weight": 1e308}

    def infinite_weight(result, plan):
        return {"total_weight": float("inf")}

    def negative_weight(result, plan):
        return {"total_weight": -1.0}

    def weight_over_cap(result, plan):  # 2 updates of at most 1e9 examples each
        return {"total_weight": 2e9 + 1}

    def metric_keys(result, plan):
        summary = MetricSummary(mean=0, min=0, max=0, count=1)
        return {"metrics": {f"m{i}": summary for i in range(10_000)}}

    def long_metric_key(result, plan):
        return {"metrics": {"x" * 65: MetricSummary(mean=0, min=0, max=0, count=1)}}

    def nan_metric(result, plan):
        return {"metrics": {"loss": MetricSummary(mean=float("nan"), min=0, max=0, count=1)}}

    def client_ids(result, plan):
        return {"client_ids": [f"c{i}" for i in range(10_001)]}

    return {f.__name__: f for f in (
        foreign_partial_key, foreign_round_id, foreign_combiner_id, huge_weight, infinite_weight,
        negative_weight, weight_over_cap, metric_keys, long_metric_key, nan_metric, client_ids,
    )}  # fmt: skip


_CASES = [
    ("foreign_partial_key", "partial key"),
    ("foreign_round_id", "round r-elsewhere"),
    ("foreign_combiner_id", "combiner 'a'"),
    ("huge_weight", "total_weight"),
    ("infinite_weight", "total_weight"),
    ("negative_weight", "total_weight"),
    ("weight_over_cap", "total_weight"),
    ("metric_keys", "metrics"),
    ("long_metric_key", "metric"),
    ("nan_metric", "metric"),
    ("client_ids", "client_ids"),
]


class _LyingGateway(FakeGateway):
    """Combiner b runs its part honestly, then changes its result as ``lie`` says."""

    lie = None

    def run_round(self, combiner: CombinerRecord, plan: RoundPlan, timeout_s: float) -> RoundResult:
        result = super().run_round(combiner, plan, timeout_s)
        if combiner.id != "b":
            return result
        return result.model_copy(update=self.lie(result, plan))


@pytest.mark.parametrize(("lie", "reason"), _CASES)
def test_a_sync_result_the_reducer_did_not_ask_for_is_that_combiners_failure(stores, lie, reason):
    state, models = stores
    controller, gateway, session, _, _ = _sync_setup(stores, _SYNC, rounds=1, gateway_class=_LyingGateway)
    gateway.lie = _tamper(stores, 1000.0)[lie]
    final = controller.run_session(session)
    assert final.status == SessionStatus.DONE
    round_ = state.list_rounds(session.id)[0]
    assert round_.num_updates == 2 and round_.total_weight == 10.0  # a's alone
    refused = [f.error for f in round_.failures if f.combiner_id == "b" and f.client_id == ""]
    assert len(refused) == 1 and "combiner b" in refused[0] and reason in refused[0], refused
    assert "not merged" in refused[0]
    np.testing.assert_allclose(_w(models, final.model_id), np.ones(4))  # a's offset, nothing of b's
    assert len(round_.metrics) <= 64


def test_a_lying_only_combiner_leaves_the_global_model_unchanged(stores):
    state, _models = stores
    behaviour = {"b": (4.0, 30.0)}
    controller, gateway, session, _, _ = _sync_setup(stores, behaviour, rounds=1, gateway_class=_LyingGateway)
    gateway.lie = _tamper(stores, 1000.0)["foreign_partial_key"]
    final = controller.run_session(session)
    assert final.status == SessionStatus.FAILED and final.model_id == session.model_id
    assert "0 updates arrived" in final.error and "partial key" in final.error
    assert state.list_models(session_id=session.id) == []


class _LyingAsyncGateway(BFirst, AsyncGateway):
    """Combiner b's result is changed as ``lie`` says; a's calls wait for b's first one to return, so
    b's result is handled before a's first flush."""

    lie = None

    def run_round(self, combiner: CombinerRecord, plan: RoundPlan, timeout_s: float) -> RoundResult:
        result = super().run_round(combiner, plan, timeout_s)
        return result if combiner.id != "b" else result.model_copy(update=self.lie(result, plan))


@pytest.mark.parametrize(("lie", "reason"), _CASES)
def test_an_async_flush_the_reducer_did_not_ask_for_is_that_combiners_failure(stores, lie, reason):
    state, models = stores
    controller, gateway, session = _async_setup(stores, {"a": 1.0, "b": 1.0}, gateway_class=_LyingAsyncGateway)
    gateway.lie = _tamper(stores, 1000.0)[lie]
    final = controller.run_session(session)
    assert final.status == SessionStatus.DONE and final.rounds_done == 4
    rounds = state.list_rounds(session.id)
    assert all(r.combiners == ["a"] for r in rounds) and "r-elsewhere" not in {r.id for r in rounds}
    sent = {p.round_id for c, p in gateway.plans if c == "a"}
    assert {r.id for r in rounds} <= sent  # each record is a flush the reducer asked a for
    np.testing.assert_allclose(_w(models, final.model_id), np.full(4, 4.0))  # a's deltas alone
    refused = [f.error for r in rounds for f in r.failures if f.combiner_id == "b" and f.client_id == ""]
    assert refused and all("combiner b" in e and reason in e and "not merged" in e for e in refused), refused


def test_an_async_flush_claiming_an_existing_rounds_id_does_not_overwrite_it(stores):
    state, _models = stores
    controller, gateway, session = _async_setup(stores, {"a": 1.0, "b": 1.0}, gateway_class=_LyingAsyncGateway)
    done = Round(session_id="other", index=1, model_in=session.model_id, status=RoundStatus.DONE)
    state.put_round(done)
    gateway.lie = lambda result, plan: {"round_id": done.id}
    controller.run_session(session)
    assert state.get_round(done.id) == done


class _InfiniteGateway(FakeGateway):
    """Both combiners' partials are finite, but their weighted sum overflows float64."""

    def run_round(self, combiner, plan, timeout_s):
        result = super().run_round(combiner, plan, timeout_s)
        self.models.put(result.partial_key, encode_model({"w": np.full(4, 1e308)}))
        return result


def test_a_sync_merge_that_is_not_finite_fails_the_round_and_stores_nothing(stores):
    state, models = stores
    controller, _, session, _, _ = _sync_setup(stores, _SYNC, rounds=1, gateway_class=_InfiniteGateway)
    models_before = len(state.list_models())
    final = controller.run_session(session)
    assert final.status == SessionStatus.FAILED and final.model_id == session.model_id
    round_ = state.list_rounds(session.id)[0]
    assert round_.status == RoundStatus.FAILED and "not finite" in round_.reason
    assert "not finite" in final.error
    assert len(state.list_models()) == models_before
    assert not models.exists(model_key(round_.id)) and round_.model_out is None


def test_an_async_flush_that_makes_the_global_model_infinite_is_refused_and_the_session_goes_on(stores):
    state, models = stores
    behaviour = {"a": 1.0, "b": np.full(4, np.inf)}
    controller, _, session = _async_setup(stores, behaviour, gateway_class=_BFirstAsyncGateway)
    final = controller.run_session(session)
    assert final.status == SessionStatus.DONE and final.rounds_done == 4
    rounds = state.list_rounds(session.id)
    refused = [r for r in rounds if r.status == RoundStatus.FAILED]
    assert refused and all(r.combiners == ["b"] and "not finite" in r.reason for r in refused)
    assert all(np.isfinite(decode_model(models.get(m.key))["w"]).all() for m in state.list_models())
    np.testing.assert_allclose(_w(models, final.model_id), np.full(4, 4.0))


def test_an_optimizer_whose_step_was_refused_continues_from_its_stored_state(stores):
    """A refused step must not leave its moments behind in the async session's optimizer."""
    state, models = stores
    behaviour = {"a": 1.0, "b": np.full(4, np.inf)}
    controller, _, session = _async_setup(stores, behaviour, rounds=2, gateway_class=_BFirstAsyncGateway)
    session = session.model_copy(update={"strategy": "fedavgm", "strategy_config": {"eta": 1.0, "momentum": 0.5}})
    final = controller.run_session(session)
    assert final.status == SessionStatus.DONE
    rounds = state.list_rounds(session.id)
    refused = {r.index for r in rounds if r.combiners == ["b"] and r.status == RoundStatus.FAILED}
    assert 1 in refused  # b's step came first, and was refused
    np.testing.assert_allclose(_w(models, final.model_id), np.full(4, 2.5))  # as with a alone


class _ChattyGateway(FakeGateway):
    """Each combiner reports 10,000 failures of 2,000 characters: a 40 MB round document."""

    def run_round(self, combiner, plan, timeout_s):
        result = super().run_round(combiner, plan, timeout_s)
        failures = [
            ClientFailureRecord(client_id=f"c{i}", combiner_id=combiner.id, error="e" * 2000) for i in range(10_000)
        ]
        return result.model_copy(update={"failures": failures})


class _DocumentLimit:
    """A state store that refuses a round document over 2 MiB, as MongoDB refuses one over 16 MB."""

    def __init__(self, inner) -> None:
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def put_round(self, round_: Round) -> None:
        size = len(round_.model_dump_json())
        if size > 2 << 20:
            raise InvalidArgument(f"cannot store rounds {round_.id}: document of {size} bytes is too large")
        self._inner.put_round(round_)


def test_what_a_result_brings_into_a_round_record_is_bounded(stores):
    state, _models = stores
    controller, _, session, _, _ = _sync_setup(stores, _SYNC, rounds=2, gateway_class=_ChattyGateway)
    controller._state = controller._merger._state = _DocumentLimit(state)
    models_before = len(state.list_models())
    final = controller.session_runner(session).run(session)
    assert final.rounds_done == 2 and len(state.list_models()) == models_before + 2
    round_ = state.list_rounds(session.id)[0]
    assert len(round_.failures) == MAX_ROUND_FAILURES + 1
    assert all(len(f.error) <= MAX_ERROR_CHARS for f in round_.failures)
    assert "19000 more failures not listed" in round_.failures[-1].error


class _ChattyAsyncGateway(AsyncGateway):
    def run_round(self, combiner, plan, timeout_s):
        result = super().run_round(combiner, plan, timeout_s)
        failures = [
            ClientFailureRecord(client_id=f"c{i}", combiner_id=combiner.id, error="e" * 2000) for i in range(10_000)
        ]
        return result.model_copy(update={"failures": failures})


def test_what_an_async_flush_brings_into_its_record_is_bounded(stores):
    state, _ = stores
    controller, _, session = _async_setup(stores, {"a": 1.0}, rounds=2, gateway_class=_ChattyAsyncGateway)
    controller._state = controller._merger._state = _DocumentLimit(state)
    final = controller.session_runner(session).run(session)
    assert final.rounds_done == 2
    rounds = state.list_rounds(session.id)
    assert [len(r.failures) for r in rounds] == [MAX_ROUND_FAILURES + 1] * 2
    assert len(state.list_models(session_id=session.id)) == 2


def test_a_tampered_model_blob_is_refused_on_load(stores):
    state, models = stores
    record = save_model(models, {"w": np.zeros(4, np.float32)})
    state.put_model(record)
    np.testing.assert_array_equal(load_verified(models, record)["w"], np.zeros(4))
    models.put(record.key, encode_model({"w": np.full(4, 1000.0, np.float32)}))  # same shape, other values
    with pytest.raises(ChecksumMismatch, match=f"model {record.id}"):
        load_verified(models, record)


def test_a_session_whose_global_model_was_tampered_with_fails_with_the_reason(stores):
    state, models = stores
    controller, _gateway, session, _, _ = _sync_setup(stores, _SYNC, rounds=1)
    seed = state.get_model(session.model_id)
    models.put(seed.key, encode_model({"w": np.full(4, 1000.0, np.float32)}))
    final = controller.run_session(session)
    assert final.status == SessionStatus.FAILED and "sha256" in final.error
    assert final.model_id == seed.id and len(state.list_models()) == 1


def test_an_async_session_whose_global_model_was_tampered_with_fails_with_the_reason(stores):
    state, models = stores
    controller, _, session = _async_setup(stores, {"a": 1.0})
    seed = state.get_model(session.model_id)
    models.put(seed.key, encode_model({"w": np.full(4, 1000.0, np.float32)}))
    final = controller.run_session(session)
    assert final.status == SessionStatus.FAILED and "sha256" in final.error
    assert final.model_id == seed.id and len(state.list_models()) == 1


def test_the_merger_loads_the_global_model_through_its_record(stores):
    state, models = stores
    _, _, session, _, _ = _sync_setup(stores, _SYNC, rounds=1)
    merger = Merger(state, models, clock=None)
    np.testing.assert_array_equal(merger.load_global(session)["w"], np.zeros(4))
    models.put(model_key(session.model_id), encode_model({"w": np.ones(4, np.float32)}))
    with pytest.raises(ChecksumMismatch):
        merger.load_global(session)
