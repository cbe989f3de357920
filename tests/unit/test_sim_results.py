"""The simulator's shared parts: how tasks are dealt to workers, and the one result log of sync and async runs."""

from __future__ import annotations

import numpy as np
import pytest

from fedn.aggregation import get_aggregator
from fedn.sim import parse_spec
from fedn.sim.memory import RssSampler
from fedn.sim.pool import deal_tasks
from fedn.sim.results import MAX_FAILURES, ResultLog


class _Evaluator:
    def __init__(self) -> None:
        self.calls: list[tuple[float, dict]] = []

    def evaluate(self, params, config):
        params["w"][:] = -1  # a client may write to what it is given
        self.calls.append((config["round"], config))
        return 0.5, 10, {"accuracy": 0.75}


def _spec(**overrides):
    return parse_spec(**{"client": "bench.workloads:SyntheticClient", "clients": 4, "rounds": 5, **overrides})


def test_mergeable_rules_are_dealt_by_position_and_others_by_whole_group() -> None:
    tasks = [(cid, cid % 3, 1.0) for cid in range(9)]
    assert get_aggregator("fedavg").mergeable and not get_aggregator("median").mergeable
    by_position = deal_tasks(tasks, 2, mergeable=True)
    assert by_position == [tasks[0::2], tasks[1::2]]
    by_group = deal_tasks(tasks, 2, mergeable=False)
    assert [sorted({t[1] for t in share}) for share in by_group] == [[0, 2], [1]]
    assert sorted(t for share in by_group for t in share) == tasks


def test_the_log_evaluates_when_due_and_at_the_last_row_on_a_copy() -> None:
    evaluator, seen = _Evaluator(), []
    log = ResultLog(
        spec=_spec(eval_every=2, config={"epochs": 2}), evaluator=evaluator, rss=RssSampler(), on_round=seen.append
    )
    model = {"w": np.zeros(3, dtype=np.float32)}
    for index in range(1, 6):
        log.record({"round": index, "status": "done"}, model, started=0.0)
    assert [c[0] for c in evaluator.calls] == [2, 4, 5]
    assert evaluator.calls[0][1] == {"epochs": 2, "round": 2}
    assert (model["w"] == 0).all()
    assert seen == log.rows and [r["round"] for r in log.rows] == [1, 2, 3, 4, 5]
    assert list(log.rows[1]) == ["round", "status", "loss", "accuracy", "wall_s", "rss_mb"]
    assert "loss" not in log.rows[0]


def test_the_log_keeps_only_the_first_failures() -> None:
    log = ResultLog(spec=_spec(), evaluator=None, rss=RssSampler())
    log.add_failures(1, [(c, f"error {c}") for c in range(MAX_FAILURES - 2)])
    log.add_failures(2, [(7, "late"), (8, "later"), (9, "dropped")])
    assert len(log.failures) == MAX_FAILURES
    assert log.failures[0] == (1, 0, "error 0") and log.failures[-1] == (2, 8, "later")


@pytest.mark.parametrize("eval_every", [1, 3])
def test_without_an_evaluator_rows_carry_no_evaluation(eval_every: int) -> None:
    log = ResultLog(spec=_spec(eval_every=eval_every), evaluator=None, rss=RssSampler())
    log.record({"round": 5}, {"w": np.zeros(1)}, started=0.0)
    assert set(log.rows[0]) == {"round", "wall_s", "rss_mb"}
