"""A model store that is down for a while costs the combiner no updates: storing a partial and reading
a model are retried with back-off on the clock, within the round's deadline plus a grace, and an
outage longer than that ends the round with a result the reducer can record, not a hang."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator

import numpy as np
import pytest

from combiner.router import RunRouter
from fedn.clock import ManualClock
from fedn.codec import decode_model
from fedn.errors import NotFound, StoreError
from fedn.records import RoundPlan, RoundResult, SessionMode
from fedn.retry import retry
from tests.unit.test_combiner_runs import Federation, _arrays, _errors, _no_heap_trim, _settle  # noqa: F401

ROUND_TIMEOUT_S = 10.0


class FlakyStore:
    """A model store whose first ``failing_puts`` writes and ``failing_reads`` reads fail with StoreError."""

    def __init__(self, inner, *, failing_puts: int = 0, failing_reads: int = 0) -> None:
        self._inner = inner
        self.failing_puts, self.failing_reads = failing_puts, failing_reads
        self.puts = self.reads = 0

    def put(self, key: str, data) -> int:
        self.puts += 1
        if self.failing_puts:
            self.failing_puts -= 1
            for _ in data:  # a real backend reads (some of) the stream before it fails
                break
            raise StoreError("s3: connection refused")
        return self._inner.put(key, data)

    def _read(self) -> None:
        self.reads += 1
        if self.failing_reads:
            self.failing_reads -= 1
            raise StoreError("s3: 503 slow down")

    def get(self, key: str) -> bytes:
        self._read()
        return self._inner.get(key)

    def iter_chunks(self, key: str, chunk_bytes: int) -> Iterator[bytes]:
        self._read()
        return self._inner.iter_chunks(key, chunk_bytes)

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


def _flaky(fed: Federation, **failures) -> FlakyStore:
    store = FlakyStore(fed.store, **failures)
    fed.ctx.models._store = store  # the cache reads and the runs write through it
    return store


async def _run_to_end(
    fed: Federation, result: asyncio.Future, step_s: float = 0.5, limit_s: float = 120.0
) -> RoundResult:
    """Advance the clock a step at a time (writes run in threads: give them real time) until ``result``."""
    moved = 0.0
    while not result.done():
        assert moved <= limit_s, "the round never ended"
        fed.clock.advance(step_s)
        moved += step_s
        await asyncio.sleep(0.02)
    return result.result()


def _plan(fed: Federation, round_id: str = "r1") -> RoundPlan:
    return RoundPlan(
        round_id=round_id, session_id="s1", round_index=1, model_id=fed.model_id, timeout_s=ROUND_TIMEOUT_S
    )


def test_a_store_outage_at_round_end_costs_no_updates(tmp_path):
    async def scenario() -> None:
        fed = Federation(tmp_path)
        fed.connect("a", "b")
        rnd, plan = await fed.sync_round(["a", "b"], timeout_s=ROUND_TIMEOUT_S)
        store = _flaky(fed, failing_puts=4)
        await fed.upload(rnd, "a", _arrays(1.0), weight=1.0)
        await fed.upload(rnd, "b", _arrays(3.0), weight=3.0)

        done = await _run_to_end(fed, asyncio.ensure_future(rnd.result(plan)))

        assert store.puts == 5 and store.failing_puts == 0
        assert (done.num_updates, done.client_ids, done.failures) == (2, ["a", "b"], [])
        partial = decode_model(fed.store.get(done.partial_key))
        np.testing.assert_allclose(partial["w"], np.full((4, 3), (1.0 + 9.0) / 4))

    asyncio.run(scenario())


def test_an_outage_longer_than_the_deadline_ends_the_round_with_its_updates_listed_as_lost(tmp_path):
    async def scenario() -> None:
        fed = Federation(tmp_path)
        fed.connect("a", "b")
        rnd, plan = await fed.sync_round(["a", "b"], timeout_s=ROUND_TIMEOUT_S)
        _flaky(fed, failing_puts=10_000)
        await fed.upload(rnd, "a", _arrays(1.0))
        rnd.report_failure("b", "out of memory")

        done = await _run_to_end(fed, asyncio.ensure_future(rnd.result(plan)))

        # the answer is in before the reducer gives up on the call (round timeout + its 15 s grace)
        assert fed.clock.now() <= ROUND_TIMEOUT_S + 15.0
        assert (done.partial_key, done.num_updates, done.client_ids) == ("", 0, [])
        errors = _errors(done)
        assert errors["b"] == "out of memory"
        assert (
            errors["a"].startswith("update lost: the partial could not be stored")
            and "connection refused" in errors["a"]
        )

    asyncio.run(scenario())


def test_reading_the_global_model_is_retried_through_an_outage(tmp_path):
    async def scenario() -> None:
        fed = Federation(tmp_path)
        fed.connect("a")
        store = _flaky(fed, failing_reads=3)
        router = RunRouter(fed.ctx)
        result = asyncio.ensure_future(router.run_round(_plan(fed)))
        for _ in range(20):
            fed.clock.advance(0.5)
            await asyncio.sleep(0.02)
            if fed.conns["a"].tasks.qsize():
                break
        assert [t.round_id for t in fed.tasks("a")] == ["r1"] and store.reads == 4
        assert fed.clock.now() < ROUND_TIMEOUT_S
        fed.clock.advance(ROUND_TIMEOUT_S)
        done = await _run_to_end(fed, result)
        assert done.num_selected == 1

    asyncio.run(scenario())


def test_an_async_base_model_read_is_retried(tmp_path):
    async def scenario() -> None:
        fed = Federation(tmp_path)
        fed.connect("c0")
        router = RunRouter(fed.ctx)
        plan = RoundPlan(
            round_id="flush-1",
            session_id="s1",
            round_index=1,
            model_id=fed.model_id,
            timeout_s=30.0,
            mode=SessionMode.ASYNC,
            buffer_size=1,
        )
        flush = asyncio.ensure_future(router.run_round(plan))
        while not fed.conns["c0"].tasks.qsize():  # the run has started once its client has a task
            await asyncio.sleep(0.005)
        store = _flaky(fed, failing_reads=2)
        run = router._run
        upload = asyncio.ensure_future(fed.upload(run, "c0", _arrays(2.0), base=fed.model_id))
        done = await _run_to_end(fed, flush, step_s=0.25)
        assert await upload == 1 and store.reads >= 3
        assert (done.num_updates, done.client_ids) == (1, ["c0"])
        router.close()

    asyncio.run(scenario())


def test_retry_backs_off_with_jitter_until_its_deadline_and_refuses_permanent_errors_at_once():
    async def scenario() -> None:
        clock = ManualClock()
        calls: list[float] = []

        async def failing() -> None:
            calls.append(clock.now())
            raise StoreError("down")

        attempt = asyncio.ensure_future(retry(failing, deadline=10.0, clock=clock, what="test", rng=lambda: 1.0))
        while not attempt.done():
            clock.advance(0.05)
            await asyncio.sleep(0)
        with pytest.raises(StoreError):
            attempt.result()
        gaps = [round(b - a, 2) for a, b in itertools.pairwise(calls)]
        assert (
            gaps[:4] == pytest.approx([0.25, 0.5, 1.0, 2.0], abs=0.06)
            and max(gaps) <= 5.0
            and calls[-1] == pytest.approx(10.0, abs=0.06)
        )

        async def unknown() -> None:
            calls.append(clock.now())
            raise NotFound("no such model")

        calls.clear()
        with pytest.raises(NotFound):
            await retry(unknown, deadline=clock.now() + 10.0, clock=clock, what="test")
        assert len(calls) == 1

    asyncio.run(scenario())
