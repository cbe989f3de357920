"""What a peer can make a combiner hold or store is bounded: metric names, an update's weight, a partial
that overflowed, a global model that is not the one the reducer recorded, the number of clients, and
the time a slow download or upload holds its slot. On a ManualClock: no sleeps."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from combiner.clients import ClientHub
from combiner.model_cache import ModelCache
from combiner.run import RunContext
from combiner.server import max_concurrent_rpcs, server_options
from combiner.settings import CombinerSettings
from combiner.staging import UploadStager
from combiner.sync_round import SyncRound
from fedn import heap, wire
from fedn.aggregation import make_aggregator
from fedn.chunking import iter_chunks
from fedn.clock import ManualClock
from fedn.codec import encode_payload, sha256_hex
from fedn.errors import ChecksumMismatch, DeadlineExceeded, InvalidArgument, ResourceExhausted
from fedn.models import partial_key, save_model
from fedn.records import RoundPlan, RoundResult
from fedn.store import LocalModelStore
from fedn.wire import ModelHeaderInfo, UpdateHeaderInfo

SETTLE_S = 10.0  # a bound on real time for work handed to threads, never a wait to assert


@pytest.fixture(autouse=True)
def _no_heap_trim(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap, "trim", lambda: False)


def _arrays(value: float, dtype=np.float32) -> dict[str, np.ndarray]:
    return {"w": np.full((4, 3), value, dtype), "b": np.full(3, value, dtype)}


class Combiner:
    """One combiner's run context on a ManualClock, with a model store in a temporary directory."""

    def __init__(self, tmp_path: Path, *, dtype=np.float32, cache: dict | None = None, **staging) -> None:
        self.clock = ManualClock()
        self.store = LocalModelStore(tmp_path / "models")
        self.record = save_model(self.store, _arrays(0.0, dtype))
        self.model_id = self.record.id
        self.ctx = RunContext(
            combiner_id="comb",
            clients=ClientHub(self.clock),
            models=ModelCache(self.store, self.clock, **(cache or {})),
            stager=UploadStager(self.clock, **staging),
            clock=self.clock,
        )

    async def sync_round(self, client_ids: list[str]) -> tuple[SyncRound, RoundPlan]:
        for client_id in client_ids:
            self.ctx.clients.connect(client_id, client_id)
        plan = RoundPlan(round_id="r1", session_id="s1", round_index=1, model_id=self.model_id, timeout_s=60.0)
        model = await self.ctx.models.get(self.model_id)
        rnd = SyncRound(self.ctx, plan, model, make_aggregator("fedavg", model.manifest, {}), client_ids)
        rnd.start()
        await _settle()
        return rnd, plan


def _update(
    run_id: str, client_id: str, arrays: dict, weight: float, metrics: dict, chunks_of: int = 16, stall_after=None
) -> tuple[UpdateHeaderInfo, AsyncIterator[bytes]]:
    manifest, data = encode_payload(arrays)
    header = UpdateHeaderInfo(
        run_id, client_id, "", weight, metrics, ModelHeaderInfo("", manifest, sha256_hex(data), len(data))
    )

    async def chunks() -> AsyncIterator[bytes]:
        for i, chunk in enumerate(iter_chunks(data, chunks_of)):
            if stall_after is not None and i == stall_after:
                await asyncio.Event().wait()  # a client that trickles: the rest never comes
            yield chunk

    return header, chunks()


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def _result(rnd: SyncRound, plan: RoundPlan) -> RoundResult:
    rnd.close("test")
    return await asyncio.wait_for(rnd.result(plan), SETTLE_S)


# -- metrics and weights -----------------------------------------------------------------


def test_a_rounds_metric_names_stay_within_what_the_reducer_accepts(tmp_path):
    async def scenario() -> None:
        comb = Combiner(tmp_path)
        rnd, plan = await comb.sync_round(["a", "b"])
        await rnd.receive(*_update("r1", "a", _arrays(1.0), 1.0, {f"a{i}": 1.0 for i in range(40)}))
        await rnd.receive(*_update("r1", "b", _arrays(1.0), 1e9, {f"b{i}": 1.0 for i in range(39)} | {"big": 1e300}))
        result = await _result(rnd, plan)
        assert result.num_updates == 2 and len(result.metrics) == 64
        assert "big" not in result.metrics  # its weighted sum overflowed: left out, not sent as inf
        assert wire.round_result_from_proto(wire.round_result_to_proto(result)).metrics == result.metrics

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("cap", "weight"),
    [(None, 2e9), (1000.0, 1001.0), (None, 0.0), (None, -1.0), (None, float("nan")), (None, float("inf"))],
)
def test_an_update_over_the_num_examples_cap_is_refused_and_not_folded(tmp_path, cap, weight):
    async def scenario() -> None:
        comb = Combiner(tmp_path, **({} if cap is None else {"max_num_examples": cap}))
        rnd, plan = await comb.sync_round(["a", "b"])
        with pytest.raises(InvalidArgument, match=r"num_examples .* at most"):
            await rnd.receive(*_update("r1", "a", _arrays(1.0), weight, {}))
        await rnd.receive(*_update("r1", "b", _arrays(2.0), 3.0, {}))
        result = await _result(rnd, plan)
        assert (result.num_updates, result.num_rejected, result.total_weight) == (1, 1, 3.0)

    asyncio.run(scenario())


def test_a_partial_that_overflowed_is_not_stored_and_the_result_says_why(tmp_path):
    async def scenario() -> None:
        comb = Combiner(tmp_path, dtype=np.float64)
        rnd, plan = await comb.sync_round(["a"])
        with np.errstate(over="ignore"):  # each value is finite; their weighted sum is not
            await rnd.receive(*_update("r1", "a", _arrays(1e300, np.float64), 1e9, {}))
        result = await _result(rnd, plan)
        assert result.partial_key == "" and result.num_updates == 0 and result.client_ids == []
        assert "not finite" in {f.client_id: f.error for f in result.failures}["a"]
        assert not comb.store.exists(partial_key("r1", "comb"))

    asyncio.run(scenario())


# -- the global model's digest ------------------------------------------------------------


def test_a_model_whose_digest_is_not_the_one_recorded_is_refused_and_not_cached(tmp_path):
    async def scenario() -> None:
        comb = Combiner(tmp_path)
        cache, wrong = comb.ctx.models, "0" * 64
        with pytest.raises(ChecksumMismatch, match=comb.model_id):
            await cache.get(comb.model_id, expected_sha256=wrong)
        assert cache.cached_model_ids() == []
        assert (await cache.get(comb.model_id, expected_sha256=comb.record.sha256)).model_id == comb.model_id
        assert (await cache.get(comb.model_id)).model_id == comb.model_id  # "": the sender did not say
        cache.expect(comb.model_id, wrong)  # an announcement names another digest for a held model
        with pytest.raises(ChecksumMismatch):
            await cache.get(comb.model_id)
        assert cache.cached_model_ids() == []

    asyncio.run(scenario())


# -- clients -------------------------------------------------------------------------------


def test_a_task_stream_past_the_client_cap_is_refused_but_a_reconnect_is_not():
    hub = ClientHub(ManualClock(), max_clients=2)
    hub.connect("a", "a")
    hub.connect("b", "b")
    with pytest.raises(ResourceExhausted, match="2 clients"):
        hub.connect("c", "c")
    _, replaced = hub.connect("a", "a")
    assert replaced and len(hub) == 2


# -- slow peers ----------------------------------------------------------------------------


def test_downloads_that_stop_reading_are_cut_off_and_free_their_slots(tmp_path):
    async def scenario() -> None:
        cache = {"max_concurrent_downloads": 2, "min_transfer_bytes_per_s": 100, "transfer_grace_s": 30.0}
        comb = Combiner(tmp_path, cache=cache)
        models = comb.ctx.models
        model = await models.get(comb.model_id)
        stalled = asyncio.Event()

        async def download(stall: bool) -> int:
            got = 0
            async with models.download_slots(model), contextlib.aclosing(models.download_messages(model)) as messages:
                async for message in messages:
                    got += len(message)
                    if stall:
                        await stalled.wait()  # a client that stopped reading
            return got

        slow = [asyncio.ensure_future(download(True)) for _ in range(2)]
        await _settle()
        legit = asyncio.ensure_future(download(False))
        await _settle()
        assert not legit.done()  # both slots held
        comb.clock.advance(30.0 + model.size / 100 - 0.5)
        await _settle()
        assert not any(t.done() for t in slow) and not legit.done()
        comb.clock.advance(1.0)
        assert await asyncio.wait_for(legit, SETTLE_S) > model.size
        for task in slow:
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(scenario())


def test_an_upload_that_trickles_is_cut_off_and_the_next_client_gets_its_slot(tmp_path):
    async def scenario() -> None:
        comb = Combiner(tmp_path, max_concurrent_uploads=1, min_transfer_bytes_per_s=10, transfer_grace_s=30.0)
        rnd, plan = await comb.sync_round(["a", "b"])
        header, chunks = _update("r1", "a", _arrays(1.0), 1.0, {}, stall_after=1)
        trickle = asyncio.ensure_future(rnd.receive(header, chunks))
        await _settle()
        assert rnd.admit("b") == (False, 0)
        comb.clock.advance(30.0 + header.model.payload_bytes / 10 + 0.5)
        with pytest.raises(DeadlineExceeded, match=r"upload .* not finished within"):
            await asyncio.wait_for(trickle, SETTLE_S)
        await _settle()
        assert rnd.admit("b") == (True, 0)
        assert await rnd.receive(*_update("r1", "b", _arrays(2.0), 1.0, {})) == 1
        assert (await _result(rnd, plan)).num_updates == 1

    asyncio.run(scenario())


def test_the_grpc_server_closes_idle_connections_bounds_calls_and_leaves_connection_age_off():
    defaults = CombinerSettings()
    options = dict(server_options(defaults))
    assert options["grpc.max_connection_idle_ms"] == 300_000
    assert "grpc.max_connection_age_ms" not in options  # it would cut long-lived task streams
    assert max_concurrent_rpcs(defaults) == 2 * 10_000 + 64
    # a burst of every client connecting at once waits in core's backlog instead of being dropped
    assert options["grpc.server.max_pending_requests"] == max_concurrent_rpcs(defaults)
    assert options["grpc.server.max_pending_requests_hard_limit"] == max_concurrent_rpcs(defaults)
    aged = dict(server_options(CombinerSettings(max_connection_age_s=3600, transfer_grace_s=10)))
    assert (aged["grpc.max_connection_age_ms"], aged["grpc.max_connection_age_grace_ms"]) == (3_600_000, 10_000)
    assert max_concurrent_rpcs(CombinerSettings(max_clients=10, max_concurrent_rpcs=7)) == 7
