"""Strategies converge in the simulator: digits, 50 clients, Dirichlet(0.3) label skew, at most 30 rounds."""

from __future__ import annotations

import pytest

from fedn.sim import Simulation, parse_spec

STRATEGIES = [
    ("fedavg", {}),
    ("fedprox", {"mu": 0.01}),
    ("fedadam", {"eta": 0.03}),
]


@pytest.mark.parametrize(("strategy", "config"), STRATEGIES, ids=[s for s, _ in STRATEGIES])
def test_strategy_reaches_085_on_label_skewed_digits_within_30_rounds(strategy: str, config: dict) -> None:
    spec = parse_spec(
        client="examples.digits:DigitsClient",
        clients=50,
        combiners=2,
        rounds=30,
        partition="dirichlet",
        alpha=0.3,
        seed=7,
        workers=2,
        strategy=strategy,
        strategy_config=config,
    )
    result = Simulation(spec).run()
    curve = [r["accuracy"] for r in result.rounds]
    assert all(r["updates"] == 50 for r in result.rounds)
    assert max(curve) >= 0.85, f"{strategy}: accuracy per round {[round(a, 3) for a in curve]}"
    assert curve[-1] >= 0.85, f"{strategy}: ended at {curve[-1]:.3f} after reaching {max(curve):.3f}"
