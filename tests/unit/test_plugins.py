"""Aggregators and strategies from other packages, registered through entry points."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

import fedn.aggregation as aggregation
import fedn.aggregation.server_optimizers as server_optimizers
from fedn.aggregation import aggregator_config, make_aggregator
from fedn.aggregation.server_optimizers import FedAvg, make_server_optimizer
from fedn.codec import manifest_of
from fedn.errors import InvalidArgument


def test_the_shipped_example_aggregator_is_found_and_clips():
    manifest = manifest_of({"w": np.zeros(4, np.float32)})
    agg = make_aggregator("clipped_mean", manifest, {"max_norm": 2.0})
    agg.add({"w": np.full(4, 1.0, np.float32)}, 1.0)  # norm 2: kept
    agg.add({"w": np.full(4, 100.0, np.float32)}, 1.0)  # norm 200: scaled to norm 2
    np.testing.assert_allclose(agg.partial().arrays["w"], np.full(4, 1.0))
    with pytest.raises(InvalidArgument, match="max_norm"):
        aggregator_config("clipped_mean", {"max_norm": 0})


@dataclass
class _EntryPoint:
    name: str
    value: str
    target: object

    def load(self):
        if isinstance(self.target, Exception):
            raise self.target
        return self.target


class HalfStep(FedAvg):
    """Moves halfway to the merged model."""

    name = "halfstep"

    def _update(self, name, x, delta):
        return x + 0.5 * delta


def test_strategy_plugins_are_loaded_checked_and_cannot_shadow_built_ins(monkeypatch, caplog):
    eps = [
        _EntryPoint("halfstep", "tests.unit.test_plugins:HalfStep", HalfStep),
        _EntryPoint("fedadam", "evil:Adam", HalfStep),  # a built-in name
        _EntryPoint("notastrategy", "pkg:thing", dict),  # not a ServerOptimizer
        _EntryPoint("broken", "missing:Nope", ImportError("no module named missing")),
    ]
    monkeypatch.setattr(server_optimizers, "entry_points", lambda group: eps if group == "fedn.strategies" else [])
    server_optimizers._strategies.cache_clear()
    try:
        new = make_server_optimizer("halfstep").step({"w": np.zeros(2)}, {"w": np.full(2, 4.0)})
        np.testing.assert_allclose(new["w"], [2.0, 2.0])
        assert type(make_server_optimizer("fedadam")).__name__ == "FedAdam"
        for name in ("notastrategy", "broken"):
            with pytest.raises(InvalidArgument, match="unknown strategy"):
                make_server_optimizer(name)
        assert "could not be loaded" in caplog.text and "ignored" in caplog.text
    finally:
        server_optimizers._strategies.cache_clear()


def test_aggregator_plugins_cannot_shadow_built_ins(monkeypatch, caplog):
    eps = [_EntryPoint("median", "evil:Median", object)]
    monkeypatch.setattr(aggregation, "entry_points", lambda group: eps)
    aggregation._aggregators.cache_clear()
    try:
        assert aggregation.get_aggregator("median").__name__ == "CoordinateMedian"
        assert "built-in name" in caplog.text
    finally:
        aggregation._aggregators.cache_clear()
