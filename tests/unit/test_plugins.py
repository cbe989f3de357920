"""Aggregators and strategies from other packages, registered through entry points."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

import fedn.aggregation as aggregation
import fedn.aggregation.server_optimizers as server_optimizers
from examples.plugins.clipped_mean import ClippedMean
from fedn.aggregation import AGGREGATORS, Aggregator, AggregatorBase, aggregator_config, make_aggregator
from fedn.aggregation.aggregator import missing_members
from fedn.aggregation.server_optimizers import FedAvg, make_server_optimizer
from fedn.aggregation.weighted_mean import Partial
from fedn.codec import manifest_of
from fedn.errors import InvalidArgument
from tests.plugin_dist import write_plugin_dist


def test_the_shipped_example_aggregator_is_found_and_clips(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(write_plugin_dist(tmp_path)))  # fedn itself registers no plug-in
    aggregation._aggregators.cache_clear()
    manifest = manifest_of({"w": np.zeros(4, np.float32)})
    try:
        agg = make_aggregator("clipped_mean", manifest, {"max_norm": 2.0})
        agg.add({"w": np.full(4, 1.0, np.float32)}, 1.0)  # norm 2: kept
        agg.add({"w": np.full(4, 100.0, np.float32)}, 1.0)  # norm 200: scaled to norm 2
        np.testing.assert_allclose(agg.partial().arrays["w"], np.full(4, 1.0))
        with pytest.raises(InvalidArgument, match="max_norm"):
            aggregator_config("clipped_mean", {"max_norm": 0})
    finally:
        aggregation._aggregators.cache_clear()


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


class _NoPartial(AggregatorBase):
    """Validates and adds, but cannot report: not an Aggregator."""

    count = 0
    total_weight = 0.0

    def validate(self, arrays, weight):
        pass

    def add(self, arrays, weight):
        pass


class _Complete(_NoPartial):
    def partial(self):
        return Partial(arrays={}, total_weight=0.0, count=0)


def test_aggregator_plugins_lacking_part_of_the_interface_are_refused(monkeypatch, caplog):
    eps = [
        _EntryPoint("nopartial", "pkg:NoPartial", _NoPartial),
        _EntryPoint("notaclass", "pkg:rule", lambda manifest, config: None),
        _EntryPoint("complete", "pkg:Complete", _Complete),
    ]
    monkeypatch.setattr(aggregation, "entry_points", lambda group: eps if group == "fedn.aggregators" else [])
    aggregation._aggregators.cache_clear()
    try:
        assert aggregation.get_aggregator("complete") is _Complete
        for name in ("nopartial", "notaclass"):
            with pytest.raises(InvalidArgument, match="unknown aggregator"):
                aggregation.get_aggregator(name)
        assert "nopartial=pkg:NoPartial ignored: not an Aggregator (lacks partial)" in caplog.text
        assert "notaclass=pkg:rule ignored" in caplog.text
        assert "complete" not in caplog.text
    finally:
        aggregation._aggregators.cache_clear()


@pytest.mark.parametrize("cls", [*AGGREGATORS.values(), ClippedMean], ids=lambda c: c.__name__)
def test_every_built_in_aggregator_offers_the_whole_interface(cls):
    assert missing_members(cls) == []
    instance = cls(manifest_of({"w": np.zeros(3, np.float32)}), cls.Config())
    assert isinstance(instance, Aggregator)
    instance.add({"w": np.ones(3, np.float32)}, 2.0)
    assert (instance.count, instance.total_weight) == (1, 2.0)
