"""Federated evaluation in the simulator: the clients' own evaluations, aggregated as a deployment does."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from fedn.errors import InvalidArgument
from fedn.loading import load_object
from fedn.sim import Simulation, parse_spec
from fedn.sim.spec import ClientFactory

SCORED = "tests.sim_eval_clients:ScoredClient"


def _spec(**overrides):
    fields = dict(client=SCORED, client_args={"params": 100}, eval_args=None, clients=20, combiners=2, rounds=2)
    fields.update(overrides)
    return parse_spec(**fields)


def _own_evaluations(spec, model, ids: list[int], round_index: int) -> list[tuple[float, float, dict]]:
    """Each client's ``evaluate`` of ``model``, recomputed here as its worker would build it."""
    make = ClientFactory(load_object(spec.client), spec)
    return [
        make(cid).evaluate({k: a.copy() for k, a in model.items()}, {**spec.config, "round": round_index})
        for cid in ids
    ]


def _weighted(pairs: list[tuple[float, float]]) -> float:
    return sum(v * n for v, n in pairs) / sum(n for _, n in pairs)


@pytest.mark.parametrize("mode_fields", [{}, {"mode": "async", "buffer_size": 4}], ids=["sync", "async"])
def test_federated_figures_are_the_example_weighted_mean_of_the_sampled_clients_own(mode_fields: dict) -> None:
    spec = _spec(fraction=0.5, combiners=3, workers=2, seed=4, **mode_fields)
    result = Simulation(spec).run()
    last = result.rounds[-1]
    ids = sorted(int(e.client_id) for e in result.evaluations)
    assert last["eval_clients"] == len(ids) == 10 and last["eval_failed"] == 0
    if not mode_fields:  # sync: the clients the round trained, as the deployment's plan draws them
        assert last["selected"] == last["updates"] == 10
    own = _own_evaluations(spec, result.model, ids, last["round"])
    assert last["eval_loss"] == pytest.approx(_weighted([(loss, n) for loss, n, _ in own]), rel=1e-12)
    assert last["eval_accuracy"] == pytest.approx(_weighted([(m["accuracy"], n) for _, n, m in own]), rel=1e-12)
    assert last["eval_round_seen"] == last["round"]  # the config carries the round
    unweighted = float(np.mean([m["accuracy"] for _, _, m in own]))
    assert last["eval_accuracy"] != pytest.approx(unweighted, rel=1e-9)  # the weights matter here
    assert {e.client_id: e.num_examples for e in result.evaluations} == {str(c): 1 + c % 3 for c in ids}


def test_with_every_digits_client_the_federated_accuracy_is_the_central_one() -> None:
    spec = parse_spec(
        client="examples.digits:DigitsClient",
        config={"epochs": 1},
        clients=6,
        combiners=2,
        rounds=2,
        partition="dirichlet",
        alpha=0.3,
        seed=7,
        workers=2,
        eval_args={"split": "test"},
    )
    result = Simulation(spec).run()
    for row in result.rounds:
        assert row["eval_clients"] == 6
        assert row["eval_accuracy"] == pytest.approx(row["accuracy"], rel=1e-6)  # float32 accuracies
        assert row["eval_loss"] == pytest.approx(row["loss"], rel=1e-5)


def test_an_evaluate_that_raises_or_returns_nan_loss_is_a_listed_failure_and_the_run_goes_on() -> None:
    # one group: a NaN metric is left out of that metric's weights inside a combiner (across combiners the
    # reducer weighs each combiner's summary by all its examples, as reducer.evaluation does)
    spec = _spec(client="tests.sim_eval_clients:BadEvalClient", clients=8, combiners=1, rounds=2, workers=2)
    result = Simulation(spec).run()
    assert [r["status"] for r in result.rounds] == ["done", "done"]
    for row in result.rounds:
        assert (row["eval_clients"], row["eval_failed"], row["updates"]) == (6, 2, 8)
    errors = {(r, c): e for r, c, e in result.failures}
    assert set(errors) == {(1, 1), (1, 2), (2, 1), (2, 2)}
    assert "evaluate: RuntimeError: held-out data is missing" in errors[(1, 1)]
    assert "loss of nan" in errors[(1, 2)]
    assert sorted(int(e.client_id) for e in result.evaluations) == [0, 3, 4, 5, 6, 7]
    # partition 3's NaN accuracy is left out of the accuracy, not of the loss
    own = dict(zip([0, 3, 4, 5, 6, 7], _own_evaluations(spec, result.model, [0, 3, 4, 5, 6, 7], 2), strict=True))
    last = result.rounds[-1]
    assert last["eval_loss"] == pytest.approx(_weighted([(loss, n) for loss, n, _ in own.values()]))
    with_accuracy = [(m["accuracy"], n) for c, (_, n, m) in own.items() if c != 3]
    assert last["eval_accuracy"] == pytest.approx(_weighted(with_accuracy))


def _eval_figures(result) -> list[dict]:
    return [{k: v for k, v in row.items() if k.startswith("eval_") and k != "eval_wall_s"} for row in result.rounds]


def test_the_same_seed_gives_the_same_federated_figures() -> None:
    spec = dict(fraction=0.4, rounds=3, workers=2, heterogeneity={"dropout": 0.3}, eval_every=2)
    a, b = Simulation(_spec(seed=3, **spec)).run(), Simulation(_spec(seed=3, **spec)).run()
    assert _eval_figures(a) == _eval_figures(b)
    assert [r["round"] for r in a.rounds if "eval_loss" in r] == [2, 3]  # every eval_every, and the last
    c = Simulation(_spec(seed=4, **spec)).run()
    assert _eval_figures(a) != _eval_figures(c)


def _cli(tmp_path, *extra: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "fedn", "simulate", "--client", SCORED, "--client-arg", "params=100",
         "--clients", "6", "--rounds", "2", "--workers", "1", "--no-progress", "--out", str(out), *extra],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    rows = json.loads((out / "metrics.json").read_text())["rounds"] if (out / "metrics.json").exists() else []
    return proc, rows


def test_cli_evaluates_on_the_clients_by_default_centrally_on_request_and_not_with_no_eval(tmp_path) -> None:
    default, rows = _cli(tmp_path / "default")
    assert default.returncode == 0, default.stderr
    assert "evaluation federated" in default.stdout and "eval_accuracy" in default.stdout
    assert all("eval_accuracy" in r and "eval_clients" in r and "loss" not in r for r in rows)

    both, rows = _cli(tmp_path / "central", "--central-eval", "--eval-client-arg", "examples=5")
    assert both.returncode == 0, both.stderr
    assert "evaluation federated and central" in both.stdout
    assert all("eval_loss" in r and "loss" in r for r in rows)

    none, rows = _cli(tmp_path / "none", "--no-eval", "--eval-client-arg", "examples=3")
    assert none.returncode == 0, none.stderr
    assert "evaluation off" in none.stdout
    assert not any(k == "loss" or k.startswith("eval_") for r in rows for k in r)


def test_cli_min_accuracy_checks_the_federated_accuracy(tmp_path) -> None:
    proc, rows = _cli(tmp_path, "--min-accuracy", "0.999")
    assert proc.returncode == 1
    assert f"final accuracy {rows[-1]['eval_accuracy']} is below" in proc.stdout
    passed, _ = _cli(tmp_path / "low", "--min-accuracy", "0.5")
    assert passed.returncode == 0, passed.stdout


def test_a_central_evaluator_that_cannot_be_built_is_a_one_line_error() -> None:
    with pytest.raises(InvalidArgument, match=r"central evaluating client .* unexpected keyword argument 'split'"):
        Simulation(_spec(eval_args={"split": "test"})).run()
