"""An evaluation round at a combiner, through the router as the servicer calls it, on a ManualClock: the
clients' figures are folded weighted by examples, every bad report is refused with a clear error, the
per-client figures are bounded, and a stopped session's round ends at once and reports nothing."""

from __future__ import annotations

import asyncio
import math

import pytest

from combiner import eval_round
from combiner.router import RunRouter
from combiner.sync_round import SyncRound
from fedn.errors import Conflict, FailedPrecondition, InvalidArgument
from fedn.records import RoundPlan, SessionMode
from fedn.v1 import fedn_pb2 as pb
from fedn.wire_eval import EvaluationReportInfo, evaluation_report_from_proto
from tests.unit.test_combiner_runs import (
    Federation,
    _arrays,
    _finished,
    _no_heap_trim,  # noqa: F401  (an autouse fixture: no ldconfig here)
    _settle,
)


def _plan(fed: Federation, round_id: str = "r1-eval", timeout_s: float = 10.0) -> RoundPlan:
    return RoundPlan(
        round_id=round_id,
        session_id="s1",
        round_index=1,
        model_id=fed.model_id,
        timeout_s=timeout_s,
        mode=SessionMode.EVALUATE,
    )


async def _started(router: RunRouter) -> None:
    """Until the router runs the round (reading the model takes a thread), bounded; then let tasks settle."""
    for _ in range(500):
        if router._run is not None:
            break
        await asyncio.sleep(0.01)
    await _settle()


def _report(fed: Federation, client_id: str, loss: float, n: float, accuracy: float, round_id: str = "r1-eval"):
    return EvaluationReportInfo(round_id, client_id, fed.model_id, loss, n, {"accuracy": accuracy})


def test_the_figures_are_the_example_weighted_means_and_each_clients_own(tmp_path):
    async def scenario() -> None:
        fed = Federation(tmp_path)
        fed.connect("a", "b", "c")
        router = RunRouter(fed.ctx)
        result = asyncio.ensure_future(router.run_round(_plan(fed)))
        await _started(router)
        assert all(fed.tasks(c, "evaluate")[0].model_id == fed.model_id for c in "abc")
        assert router.report_evaluation(_report(fed, "a", 1.0, 10, 0.5)) == 1
        assert router.report_evaluation(_report(fed, "b", 3.0, 30, 0.9)) == 2
        router.report_failure("r1-eval", "c", "no held-out data")
        done = await _finished(result)
        assert (done.num_selected, done.num_updates, done.total_weight, done.partial_key) == (3, 2, 40.0, "")
        assert done.metrics["loss"].mean == pytest.approx((1.0 * 10 + 3.0 * 30) / 40)
        assert done.metrics["accuracy"].mean == pytest.approx((0.5 * 10 + 0.9 * 30) / 40)
        assert (done.metrics["accuracy"].min, done.metrics["accuracy"].max) == (0.5, 0.9)
        assert [(e.client_id, e.loss, e.num_examples) for e in done.evaluations] == [("a", 1.0, 10), ("b", 3.0, 30)]
        assert {f.client_id: f.error for f in done.failures} == {"c": "no held-out data"}

    asyncio.run(scenario())


def test_bad_reports_are_refused_with_what_is_wrong(tmp_path):
    async def scenario() -> None:
        fed = Federation(tmp_path)
        fed.connect("a", "b", "c")
        router = RunRouter(fed.ctx)
        result = asyncio.ensure_future(router.run_round(_plan(fed)))
        await _started(router)
        with pytest.raises(FailedPrecondition, match="unknown"):
            router.report_evaluation(_report(fed, "a", 1.0, 1, 0.5, round_id="other"))
        with pytest.raises(FailedPrecondition, match="not asked"):
            router.report_evaluation(_report(fed, "zz", 1.0, 1, 0.5))
        wrong_model = EvaluationReportInfo("r1-eval", "a", "another-model", 1.0, 1.0, {})
        with pytest.raises(InvalidArgument, match="evaluates"):
            router.report_evaluation(wrong_model)
        with pytest.raises(InvalidArgument, match="max_num_examples"):
            router.report_evaluation(_report(fed, "b", 1.0, 1e12, 0.5))
        router.report_evaluation(_report(fed, "a", 1.0, 5, 0.5))
        with pytest.raises(Conflict, match="already"):
            router.report_evaluation(_report(fed, "a", 1.0, 5, 0.5))
        with pytest.raises(FailedPrecondition, match="evaluation round"):
            router.request_upload("r1-eval", "c", 10)
        fed.clock.advance(10.1)
        done = await _finished(result)
        assert done.num_updates == 1 and done.num_rejected == 1
        errors = {f.client_id: f.error for f in done.failures}
        assert "max_num_examples" in errors["b"] and "no evaluation within the round deadline" in errors["c"]

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [("loss", math.nan, "loss"), ("loss", math.inf, "loss"), ("num_examples", 0.0, "num_examples"),
     ("num_examples", -1.0, "num_examples"), ("num_examples", math.nan, "num_examples"),
     ("client_id", "../x", "client_id"), ("round_id", "", "round_id")],
)  # fmt: skip
def test_a_report_off_the_wire_is_checked(field, value, match):
    msg = pb.EvaluationReport(round_id="r", client_id="c", model_id="m", loss=0.5, num_examples=3.0)
    setattr(msg, field, value)
    with pytest.raises(InvalidArgument, match=match):
        evaluation_report_from_proto(msg)
    msg = pb.EvaluationReport(round_id="r", client_id="c", model_id="m", loss=0.5, num_examples=3.0)
    msg.metrics["accuracy"] = math.nan  # a NaN metric is left out, the report kept
    assert evaluation_report_from_proto(msg).metrics == {}


def test_each_clients_own_figures_are_bounded_but_every_client_counts(tmp_path, monkeypatch):
    monkeypatch.setattr(eval_round, "MAX_CLIENT_EVALUATIONS", 2)

    async def scenario() -> None:
        fed = Federation(tmp_path)
        clients = [f"c{i}" for i in range(5)]
        fed.connect(*clients)
        router = RunRouter(fed.ctx)
        result = asyncio.ensure_future(router.run_round(_plan(fed)))
        await _started(router)
        for i, c in enumerate(clients):
            router.report_evaluation(_report(fed, c, float(i), 1, 0.1 * i))
        done = await _finished(result)
        assert done.num_updates == 5 and done.total_weight == 5 and len(done.client_ids) == 5
        assert len(done.evaluations) == 2 and done.metrics["loss"].mean == pytest.approx(2.0)

    asyncio.run(scenario())


def test_abandon_ends_a_stopped_sessions_round_at_once_and_keeps_nothing(tmp_path):
    async def scenario() -> None:
        fed = Federation(tmp_path)
        fed.connect("a", "b")
        router = RunRouter(fed.ctx)
        plan = RoundPlan(round_id="r1", session_id="s1", round_index=1, model_id=fed.model_id, timeout_s=100.0)
        result = asyncio.ensure_future(router.run_round(plan))
        await _started(router)
        assert not router.abandon("another-session", "", "stopped by admin")
        rnd = router._run
        assert isinstance(rnd, SyncRound)
        await fed.upload(rnd, "a", _arrays(1.0))
        assert router.abandon("s1", "", "stopped by admin")
        done = await _finished(result)  # no clock advance: it did not wait for its deadline
        assert done.partial_key == "" and done.num_updates == 0 and not list(fed.store.list_keys("partials/"))
        assert not router.abandon("s1", "", "stopped by admin")  # nothing of it runs any more
        with pytest.raises(FailedPrecondition, match="closed"):
            router.report_failure("r1", "b", "late")

    asyncio.run(scenario())


def test_a_metric_some_clients_leave_out_is_averaged_over_the_others_only():
    from fedn.aggregation import MetricsAccumulator, merge_metric_summaries

    one, two = MetricsAccumulator(), MetricsAccumulator()
    one.add({"loss": 1.0, "auc": 0.6}, 10)
    one.add({"loss": 2.0}, 30)  # this client's auc was NaN: left out
    two.add({"loss": 4.0, "auc": 0.9}, 20)
    merged = merge_metric_summaries([(one.summary(), 40.0), (two.summary(), 20.0)])
    assert merged["auc"].mean == pytest.approx((0.6 * 10 + 0.9 * 20) / 30)  # not weighted by the 30 without one
    assert merged["loss"].mean == pytest.approx((1.0 * 10 + 2.0 * 30 + 4.0 * 20) / 60)
    assert (merged["auc"].weight, merged["auc"].count) == (30, 2)
