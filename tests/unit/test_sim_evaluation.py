"""The simulator's evaluation options, its due rule, its round sample and its round line, without workers."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

import fedn.sim
from fedn.cli import simulate
from fedn.records import ClientEvaluation
from fedn.sim import SimulationResult, parse_spec
from fedn.sim.memory import RssSampler
from fedn.sim.results import ResultLog
from fedn.sim.spec import round_sample


def _spec(**overrides):
    return parse_spec(**{"client": "bench.workloads:SyntheticClient", "clients": 12, "rounds": 5, **overrides})


@pytest.mark.parametrize(("eval_every", "due"), [(1, [1, 2, 3, 4, 5]), (2, [2, 4, 5]), (9, [5])])
def test_evaluation_is_due_every_eval_every_and_at_the_last(eval_every: int, due: list[int]) -> None:
    log = ResultLog(spec=_spec(eval_every=eval_every), evaluator=None, rss=RssSampler())
    assert [i for i in range(1, 6) if log.evaluation_due(i)] == due


def test_the_log_keeps_only_the_newest_clients_evaluations() -> None:
    log = ResultLog(spec=_spec(), evaluator=None, rss=RssSampler())
    first = [ClientEvaluation(client_id="1", loss=0.5, num_examples=3)]
    second = [ClientEvaluation(client_id="2", loss=0.4, num_examples=2)]
    log.keep_evaluations(first)
    log.keep_evaluations(second)
    assert log.evaluations == second


def test_round_sample_draws_the_fraction_per_group_from_the_round_seed() -> None:
    spec = _spec(clients=40, combiners=4, fraction=0.25, seed=3)
    sample = round_sample(spec, 1)
    assert sum(len(ids) for ids in sample) == 10 and all(2 <= len(ids) <= 3 for ids in sample)
    assert all(cid % 4 == group for group, ids in enumerate(sample) for cid in ids)
    assert sample == round_sample(spec, 1)
    assert sample != round_sample(spec, 2)
    assert round_sample(_spec(clients=6, combiners=2), 1) == [[0, 2, 4], [1, 3, 5]]


def test_the_round_line_shows_federated_then_central_figures() -> None:
    row = {"round": 2, "updates": 4, "selected": 5, "train_loss": 0.5, "status": "done", "wall_s": 1.0}
    row |= {"eval_loss": 0.25, "eval_accuracy": 0.875, "eval_clients": 3, "eval_failed": 1, "eval_wall_s": 0.1}
    row |= {"loss": 0.3, "accuracy": 0.9}
    line = simulate._round_line(row, 4)
    assert line == (
        "round   2/4 | clients 4/5 | train loss 0.5000 | eval_accuracy 0.8750 | eval_loss 0.2500 | "
        "eval_clients 3 (1 failed) | accuracy 0.9000 | 1.00 s"
    )


class _FakeSimulation:
    specs: list = []

    def __init__(self, spec) -> None:
        self.spec = spec
        self.specs.append(spec)

    def run(self, on_round=None, on_progress=None) -> SimulationResult:
        row = {"round": 1, "updates": 1, "selected": 1, "status": "done", "wall_s": 0.1, "accuracy": 0.95}
        if self.specs[-1].federated_eval:
            row |= {"eval_accuracy": 0.6, "eval_loss": 0.4, "eval_clients": 1}
        return SimulationResult(rounds=[row], model={"w": np.zeros(1, dtype=np.float32)}, wall_s=0.1, peak_rss_mb=1)


def _run(monkeypatch, tmp_path, *argv: str) -> tuple[int, object]:
    monkeypatch.setattr(fedn.sim, "Simulation", _FakeSimulation)
    files = dict.fromkeys(["json", "csv", "model"], tmp_path)
    monkeypatch.setattr(fedn.sim, "write_outputs", lambda spec, result, out: files)
    parser = argparse.ArgumentParser()
    simulate.register(parser.add_subparsers())
    common = ["--client", "bench.workloads:SyntheticClient", "--clients", "2", "--rounds", "1", "--workers", "1"]
    args = parser.parse_args(["simulate", *common, "--no-progress", "--out", str(tmp_path / "run"), *argv])
    code = args.func(args)
    return code, _FakeSimulation.specs[-1]


@pytest.mark.parametrize(
    ("argv", "federated", "central"),
    [
        ((), True, None),
        (("--central-eval",), True, {"split": "test"}),
        (("--eval-client-arg", "split=valid"), True, {"split": "valid"}),
        (("--no-eval", "--central-eval"), False, None),
        (("--evaluate-every", "0"), False, None),
        (("--eval-every", "0", "--central-eval"), False, {"split": "test"}),
    ],
)
def test_cli_options_choose_the_evaluations(monkeypatch, tmp_path, argv, federated, central) -> None:
    code, spec = _run(monkeypatch, tmp_path, *argv)
    assert code == 0
    assert (spec.federated_eval, spec.eval_args) == (federated, central)
    assert spec.eval_every == 1


def test_min_accuracy_reads_the_federated_accuracy_when_there_is_one(monkeypatch, tmp_path, capsys) -> None:
    code, _ = _run(monkeypatch, tmp_path, "--central-eval", "--min-accuracy", "0.9")
    assert code == 1 and "final accuracy 0.6 is below" in capsys.readouterr().out
    code, _ = _run(monkeypatch, tmp_path, "--no-eval", "--min-accuracy", "0.9")  # no federated figure: 0.95
    assert code == 0


def test_eval_every_is_the_deployments_evaluate_every(monkeypatch, tmp_path) -> None:
    _, spec = _run(monkeypatch, tmp_path, "--eval-every", "3")
    assert (spec.eval_every, spec.federated_eval) == (3, True)
    _, spec = _run(monkeypatch, tmp_path, "--evaluate-every", "2")
    assert spec.eval_every == 2
