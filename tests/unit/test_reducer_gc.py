"""Garbage collection of the model store: ended rounds' partials and unrecorded models go, the rest stays."""

from __future__ import annotations

import threading

import numpy as np

from fedn.clock import ManualClock
from fedn.codec import encode_model
from fedn.errors import StoreError
from fedn.models import model_key, partial_key, save_model
from fedn.records import Round, RoundStatus
from reducer.gc import GarbageCollector, GcReport

_HOUR = 3600.0


def _blob(models, key: str) -> None:
    models.put(key, encode_model({"w": np.zeros(4, np.float32)}))


def _round(state, status: RoundStatus) -> Round:
    round_ = Round(session_id="s", index=1, model_in="m", status=status)
    state.put_round(round_)
    return round_


def test_ended_rounds_partials_and_old_unrecorded_models_are_removed_the_rest_kept(stores):
    state, models = stores
    statuses = (RoundStatus.DONE, RoundStatus.FAILED, RoundStatus.STOPPED, RoundStatus.RUNNING)
    done, failed, stopped, running = (_round(state, s) for s in statuses)
    for round_ in (done, failed, stopped, running):
        _blob(models, partial_key(round_.id, "c1"))
        _blob(models, partial_key(round_.id, "c2"))
    _blob(models, partial_key("unrecorded", "c1"))  # e.g. an async flush the reducer has not recorded yet
    recorded = save_model(models, {"w": np.ones(4)})
    state.put_model(recorded)
    _blob(models, model_key("orphan"))
    _blob(models, "sessions/s/strategy-state-1.safetensors")

    young = GarbageCollector(state, models, grace_s=_HOUR).collect()  # every blob was written just now
    # a stopped session's round whose combiners stored their partials anyway (the stop did not reach them)
    assert young.partials == 6 and young.models == 0 and young.bytes_freed > 0
    keys = {b.key for b in models.list_keys()}
    assert not any(k.startswith(f"partials/{r.id}/") for r in (done, failed, stopped) for k in keys)
    assert {partial_key(running.id, "c1"), partial_key(running.id, "c2")} <= keys
    assert {partial_key("unrecorded", "c1"), model_key("orphan"), recorded.key} <= keys

    later = GarbageCollector(state, models, grace_s=_HOUR, wall_time=lambda: 1e10).collect()
    assert later == GcReport(partials=1, models=1, bytes_freed=later.bytes_freed)
    keys = {b.key for b in models.list_keys()}
    assert keys == {
        partial_key(running.id, "c1"),
        partial_key(running.id, "c2"),
        recorded.key,
        "sessions/s/strategy-state-1.safetensors",
    }


class _Away:
    """A model store that cannot be listed."""

    def __init__(self) -> None:
        self.calls = 0

    def list_keys(self, prefix=""):
        self.calls += 1
        raise StoreError("the model store is away")


def test_passes_run_every_interval_on_the_clock_and_a_store_error_waits_for_the_next(stores):
    state, _ = stores
    clock, away = ManualClock(), _Away()
    collector = GarbageCollector(state, away, interval_s=600.0, clock=clock)
    collector.start()
    try:
        threading.Event().wait(0.1)
        assert away.calls == 0
        clock.advance(600.0)
        for _ in range(200):
            if away.calls:
                break
            threading.Event().wait(0.01)
        assert away.calls == 1, "one pass, and its error did not end the collector"
        clock.advance(600.0)
        for _ in range(200):
            if away.calls == 2:
                break
            threading.Event().wait(0.01)
        assert away.calls == 2
    finally:
        collector.stop()
