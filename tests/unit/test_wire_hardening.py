"""What a peer sends is bounded at decode: metric names in number and length, and the global model's
digest carried from the reducer's plan or announcement to the combiner."""

from __future__ import annotations

import pytest

from fedn import wire
from fedn.errors import InvalidArgument
from fedn.records import MetricSummary, RoundPlan, RoundResult
from fedn.wire import ModelHeaderInfo, UpdateHeaderInfo

DIGEST = "ab" * 32


def _header(metrics: dict[str, float], num_examples: float = 1.0) -> wire.pb.UpdateHeader:
    info = UpdateHeaderInfo("r1", "c1", "", num_examples, metrics, ModelHeaderInfo("", [], DIGEST, 0))
    return wire.update_header_to_proto(info)


def _result(metrics: dict[str, MetricSummary]) -> wire.pb.RoundResult:
    return wire.round_result_to_proto(RoundResult(round_id="r1", combiner_id="comb", metrics=metrics))


def test_an_update_may_carry_64_metrics_of_64_characters_and_no_more():
    ok = {f"{i:02d}" + "m" * 62: float(i) for i in range(64)}
    assert wire.update_header_from_proto(_header(ok)).metrics == ok
    with pytest.raises(InvalidArgument, match="at most 64 metrics"):
        wire.update_header_from_proto(_header({f"m{i}": 1.0 for i in range(65)}))
    with pytest.raises(InvalidArgument, match=r"metric name.*64"):
        wire.update_header_from_proto(_header({"m" * 65: 1.0}))


def test_a_round_result_may_carry_64_metric_summaries_of_64_characters_and_no_more():
    summary = MetricSummary(mean=1.0, min=0.0, max=2.0, count=3)
    ok = {f"m{i}": summary for i in range(64)}
    assert wire.round_result_from_proto(_result(ok)).metrics == ok
    with pytest.raises(InvalidArgument, match="at most 64 metrics"):
        wire.round_result_from_proto(_result({f"m{i}": summary for i in range(65)}))
    with pytest.raises(InvalidArgument, match=r"metric name.*64"):
        wire.round_result_from_proto(_result({"m" * 65: summary}))
    with pytest.raises(InvalidArgument, match="finite"):
        wire.round_result_from_proto(_result({"loss": MetricSummary(mean=float("nan"), min=0, max=0, count=1)}))


def test_the_global_models_digest_travels_with_a_plan_and_an_announcement():
    plan = RoundPlan(round_id="r1", session_id="s1", round_index=1, model_id="m1", model_sha256=DIGEST)
    assert wire.round_plan_from_proto(wire.round_plan_to_proto(plan)).model_sha256 == DIGEST
    unsaid = RoundPlan(round_id="r1", session_id="s1", round_index=1, model_id="m1")
    assert wire.round_plan_from_proto(wire.round_plan_to_proto(unsaid)).model_sha256 == ""
    info = wire.Announcement("s1", "m2", 3, model_sha256=DIGEST)
    assert wire.announcement_from_proto(wire.announcement_to_proto(info)) == info
    assert wire.announcement_from_proto(wire.announcement_to_proto(wire.Announcement("s1", "m2", 3))).model_sha256 == ""


def test_a_malformed_digest_is_refused():
    msg = wire.round_plan_to_proto(RoundPlan(round_id="r1", session_id="s1", round_index=1, model_id="m1"))
    msg.model_sha256 = "not-a-digest"
    with pytest.raises(InvalidArgument, match="model_sha256"):
        wire.round_plan_from_proto(msg)
    announcement = wire.pb.ModelAnnouncement(session_id="s1", model_id="m2", model_version=1, model_sha256="AB" * 32)
    with pytest.raises(InvalidArgument, match="model_sha256"):
        wire.announcement_from_proto(announcement)


@pytest.mark.parametrize("timeout_s", [float("nan"), float("inf"), -1.0, 2.0**63, 1e308])
def test_a_task_with_a_timeout_no_combiner_sends_is_refused(timeout_s: float):
    # a client waits on a heartbeat's interval and a train task's deadline: NaN or 2**63 there would
    # make it wait forever or fail inside the standard library's timers
    msg = wire.task_to_proto(wire.TaskInfo("heartbeat", timeout_s=0.0))
    msg.timeout_s = timeout_s
    with pytest.raises(InvalidArgument, match="timeout_s"):
        wire.task_from_proto(msg)


def test_a_task_timeout_from_zero_to_116_days_is_taken():
    for timeout_s in (0.0, 2.5, 1e7):
        task = wire.TaskInfo("train", timeout_s=timeout_s)
        assert wire.task_from_proto(wire.task_to_proto(task)).timeout_s == timeout_s
