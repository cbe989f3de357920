"""A sync round and an async run driven through the Run interface, on a ManualClock: time moves only
when a test advances it, so deadlines, grant expiry, back-off and leases are asserted without sleeping."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from combiner.async_run import AsyncRun, async_run_id
from combiner.clients import ClientConnection, ClientHub
from combiner.model_cache import ModelCache
from combiner.run import Run, RunContext, failure_text
from combiner.staging import UploadStager
from combiner.sync_round import SyncRound
from fedn import heap
from fedn.aggregation import make_aggregator
from fedn.chunking import iter_chunks
from fedn.clock import ManualClock
from fedn.codec import decode_model, encode_payload, sha256_hex
from fedn.errors import FailedPrecondition
from fedn.models import save_model
from fedn.records import RoundPlan, RoundResult, SessionMode
from fedn.store import LocalModelStore
from fedn.wire import ModelHeaderInfo, TaskInfo, UpdateHeaderInfo

GRANT_TIMEOUT_S = 5.0
SETTLE_S = 10.0  # a bound on real time for work handed to threads (storing a partial), never a wait to assert


@pytest.fixture(autouse=True)
def _no_heap_trim(monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding libc's malloc_trim runs ldconfig, a process the unit guard forbids; memory is not tested here."""
    monkeypatch.setattr(heap, "trim", lambda: False)


def _arrays(shift: float) -> dict[str, np.ndarray]:
    return {"w": np.full((4, 3), shift, np.float32), "b": np.arange(3, dtype=np.float32) + shift}


class Federation:
    """One combiner's run context on a ManualClock and a model store in a temporary directory."""

    def __init__(self, tmp_path: Path, **staging) -> None:
        self.clock = ManualClock()
        self.store = LocalModelStore(tmp_path / "models")
        self.model_id = save_model(self.store, _arrays(0.0)).id
        self.ctx = RunContext(
            combiner_id="comb",
            clients=ClientHub(self.clock),
            models=ModelCache(self.store, self.clock, grant_timeout_s=GRANT_TIMEOUT_S),
            stager=UploadStager(self.clock, grant_timeout_s=GRANT_TIMEOUT_S, **staging),
            clock=self.clock,
        )
        self.conns: dict[str, ClientConnection] = {}

    def connect(self, *client_ids: str) -> None:
        for client_id in client_ids:
            self.conns[client_id], _ = self.ctx.clients.connect(client_id, client_id)

    def tasks(self, client_id: str, kind: str = "train") -> list[TaskInfo]:
        """The tasks of ``kind`` queued on the client's stream so far (taken off the queue)."""
        queue = self.conns[client_id].tasks
        got = [queue.get_nowait() for _ in range(queue.qsize())]
        return [t for t in got if t.kind == kind]

    async def sync_round(self, client_ids: list[str], timeout_s: float = 10.0) -> tuple[SyncRound, RoundPlan]:
        plan = RoundPlan(round_id="r1", session_id="s1", round_index=1, model_id=self.model_id, timeout_s=timeout_s)
        model = await self.ctx.models.get(self.model_id)
        aggregator = make_aggregator(plan.aggregator, model.manifest, plan.aggregator_config)
        rnd = SyncRound(self.ctx, plan, model, aggregator, client_ids)
        rnd.start()
        await _settle()
        return rnd, plan

    async def upload(
        self, run: Run, client_id: str, arrays: dict[str, np.ndarray], weight: float = 1.0, base: str = ""
    ) -> int:
        manifest, data = encode_payload(arrays)
        header = UpdateHeaderInfo(
            run.run_id,
            client_id,
            base,
            weight,
            {"loss": weight},
            ModelHeaderInfo("", manifest, sha256_hex(data), len(data)),
        )

        async def chunks() -> AsyncIterator[bytes]:
            for chunk in iter_chunks(data, 16):
                yield chunk

        return await run.receive(header, chunks())


async def _settle() -> None:
    """Let every task that is ready run until it waits again (on the clock, a queue or an event)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def _finished(result: asyncio.Future) -> RoundResult:
    return await asyncio.wait_for(result, SETTLE_S)


def _errors(result: RoundResult) -> dict[str, str]:
    return {f.client_id: f.error for f in result.failures}


def test_the_deadline_ends_a_sync_round_and_lists_the_clients_that_did_not_answer(tmp_path):
    async def scenario() -> None:
        fed = Federation(tmp_path)
        fed.connect("a", "b", "c")
        rnd, plan = await fed.sync_round(["a", "b", "c"], timeout_s=10.0)
        assert all(fed.tasks(c)[0].round_id == "r1" for c in "abc")
        assert await fed.upload(rnd, "a", _arrays(2.0), weight=3.0) == 1
        rnd.report_failure("b", "out of memory")
        result = asyncio.ensure_future(rnd.result(plan))

        fed.clock.advance(9.9)
        await _settle()
        assert not result.done() and not rnd.closed
        fed.clock.advance(0.2)
        done = await _finished(result)

        assert (done.num_selected, done.num_updates, done.num_rejected) == (3, 1, 0)
        assert _errors(done) == {"b": "out of memory", "c": "no update within the round deadline (10s)"}
        assert done.client_ids == ["a"] and done.total_weight == 3.0
        np.testing.assert_array_equal(decode_model(fed.store.get(done.partial_key))["w"], np.full((4, 3), 2.0))
        with pytest.raises(FailedPrecondition, match="closed"):
            await fed.upload(rnd, "c", _arrays(1.0))

    asyncio.run(scenario())


def test_an_unused_upload_grant_passes_to_the_next_queued_client(tmp_path):
    async def scenario() -> None:
        fed = Federation(tmp_path, max_concurrent_uploads=1)
        fed.connect("a", "b")
        rnd, plan = await fed.sync_round(["a", "b"], timeout_s=60.0)
        assert rnd.admit("a") == (True, 0)
        assert rnd.admit("b") == (False, 0)
        assert fed.tasks("b", "upload_grant") == []

        fed.clock.advance(GRANT_TIMEOUT_S - 1.0)
        assert fed.tasks("b", "upload_grant") == []
        fed.clock.advance(1.5)  # a never started its upload: its grant lapses and b is told down its stream
        assert [t.round_id for t in fed.tasks("b", "upload_grant")] == ["r1"]
        assert rnd.admit("b") == (True, 0)  # asking again keeps it
        assert await fed.upload(rnd, "b", _arrays(1.0)) == 1

        fed.clock.advance(60.0)
        done = await _finished(asyncio.ensure_future(rnd.result(plan)))
        assert done.num_updates == 1 and set(_errors(done)) == {"a"}

    asyncio.run(scenario())


def test_a_client_that_disconnects_is_a_failure_and_the_round_ends_when_the_rest_answered(tmp_path):
    async def scenario() -> None:
        fed = Federation(tmp_path)
        fed.connect("a", "b")
        rnd, plan = await fed.sync_round(["a", "b"], timeout_s=60.0)
        await fed.upload(rnd, "a", _arrays(1.0))
        assert fed.ctx.clients.disconnect(fed.conns["b"])
        rnd.client_left("b")

        done = await _finished(asyncio.ensure_future(rnd.result(plan)))  # no time passed on the clock
        assert fed.clock.now() == 0.0
        assert (done.num_selected, done.num_updates) == (2, 1)
        assert _errors(done) == {"b": "client disconnected"}

    asyncio.run(scenario())


def _async_plan(model_id: str, flush: int, **changes) -> RoundPlan:
    fields = {"round_id": f"flush-{flush}", "session_id": "s1", "round_index": flush, "model_id": model_id}
    return RoundPlan(**fields, timeout_s=30.0, mode=SessionMode.ASYNC, buffer_size=2, **changes)


async def _async_run(fed: Federation, **changes) -> tuple[AsyncRun, RoundPlan]:
    plan = _async_plan(fed.model_id, 1, **changes)
    AsyncRun.check_plan(plan)
    run = AsyncRun(fed.ctx, plan, await fed.ctx.models.get(fed.model_id), lease_s=60.0)
    run.start()
    await _settle()
    return run, plan


def test_an_async_flush_stores_a_partial_of_buffer_size_updates(tmp_path):
    async def scenario() -> None:
        fed = Federation(tmp_path)
        fed.connect("c0", "c1", "c2")
        run, plan = await _async_run(fed)
        m0 = fed.model_id
        assert {(t.round_id, t.model_id, t.round_index) for c in fed.conns for t in fed.tasks(c)} == {
            (async_run_id("s1"), m0, 1)
        }
        flush = asyncio.ensure_future(run.result(plan))
        await fed.upload(run, "c0", _arrays(1.0), weight=1.0, base=m0)
        await _settle()
        assert not flush.done()
        await fed.upload(run, "c1", _arrays(4.0), weight=3.0, base=m0)
        done = await _finished(flush)

        assert (done.round_id, done.num_updates, done.total_weight) == ("flush-1", 2, 4.0)
        assert done.client_ids == ["c0", "c1"] and done.failures == []
        delta = decode_model(fed.store.get(done.partial_key))  # the mean delta from m0, weighted by examples
        np.testing.assert_allclose(delta["w"], np.full((4, 3), (1.0 * 1 + 4.0 * 3) / 4))
        assert [t.model_id for t in fed.tasks("c0")] == [m0]  # clients train continuously

        # the next flush times out on the clock with the one update that arrived: the open buffer
        next_flush = asyncio.ensure_future(run.result(_async_plan(m0, 2)))
        await _settle()  # it waits on the clock from now
        await fed.upload(run, "c2", _arrays(2.0), base=m0)
        fed.clock.advance(30.0)
        partial = await _finished(next_flush)
        assert (partial.round_id, partial.num_updates, partial.client_ids) == ("flush-2", 1, ["c2"])
        run.close("test over")

    asyncio.run(scenario())


def test_an_async_client_that_failed_gets_its_next_task_after_a_back_off(tmp_path):
    async def scenario() -> None:
        fed = Federation(tmp_path)
        fed.connect("c0")
        run, plan = await _async_run(fed)
        assert len(fed.tasks("c0")) == 1
        flush = asyncio.ensure_future(run.result(plan))
        await _settle()
        run.report_failure("c0", "oops")
        fed.clock.advance(0.4)
        assert fed.tasks("c0") == []
        fed.clock.advance(0.2)
        assert len(fed.tasks("c0")) == 1
        fed.clock.advance(30.0)
        done = await _finished(flush)
        assert done.num_updates == 0 and _errors(done) == {"c0": "oops"}
        run.close("test over")

    asyncio.run(scenario())


def test_an_async_run_ends_once_no_flush_was_asked_for_during_its_lease(tmp_path):
    async def scenario() -> None:
        fed = Federation(tmp_path)
        fed.connect("c0")
        run, _ = await _async_run(fed)
        for _ in range(59):
            fed.clock.advance(1.0)
            await _settle()
        assert not run.closed
        for _ in range(3):
            fed.clock.advance(1.0)
            await _settle()
        assert run.closed
        with pytest.raises(FailedPrecondition, match="ended"):
            run.admit("c0")

    asyncio.run(scenario())


def test_heartbeats_go_to_idle_streams_once_per_interval_and_carry_it(tmp_path):
    async def scenario() -> None:
        fed = Federation(tmp_path)
        fed.connect("idle", "busy", "fed")
        assert fed.ctx.clients.heartbeat() == TaskInfo("heartbeat", timeout_s=2.0)  # a stream's first message
        beats = asyncio.ensure_future(fed.ctx.clients.send_heartbeats())
        await _settle()
        fed.ctx.clients.send("busy", TaskInfo("train", "r1"))  # left queued: a stream with work waiting gets none
        got: dict[str, list[float]] = {"idle": [], "fed": []}
        for step in range(1, 33):  # 8 s in quarter seconds (a pass of the loop)
            if step == 16:  # "fed" gets a task at 3.75 s: its next heartbeat is due about an interval after that
                fed.ctx.clients.send("fed", TaskInfo("train", "r2"))
                assert [t.round_id for t in fed.tasks("fed")] == ["r2"]
            fed.clock.advance(0.25)
            await _settle()
            for c, times in got.items():
                beats_now = fed.tasks(c, "heartbeat")
                assert all(t.timeout_s == 2.0 for t in beats_now)  # each tells the interval
                times.extend(fed.clock.now() for _ in beats_now)
        assert got == {"idle": [2.0, 4.0, 6.0, 8.0], "fed": [2.0, 5.75, 7.75]}
        assert fed.tasks("busy", "heartbeat") == []  # its queue was never empty
        beats.cancel()

    asyncio.run(scenario())


def test_heartbeats_come_further_apart_when_there_are_more_clients_than_the_rate_allows():
    async def scenario() -> None:
        clock = ManualClock()
        hub = ClientHub(clock, heartbeat_interval_s=1.0, max_heartbeats_per_s=4.0)
        conns = [hub.connect(f"c{i}", f"c{i}")[0] for i in range(20)]  # 20 clients at 4 a second: every 5 s
        assert hub.heartbeat_interval_s() == 5.0 and hub.heartbeat().timeout_s == 5.0
        # however few a second are allowed, or however long the interval, clients hear at least every 2 min
        assert ClientHub(clock, heartbeat_interval_s=1e9).heartbeat_interval_s() == 120.0
        slow = ClientHub(clock, max_heartbeats_per_s=1e-6)
        slow.connect("x", "x")
        assert slow.heartbeat_interval_s() == 120.0
        beats = asyncio.ensure_future(hub.send_heartbeats())
        await _settle()
        sent = 0
        for _ in range(32):  # 20 s of the clock, in eighths of the interval
            clock.advance(5.0 / 8)
            await _settle()
            for c in conns:
                while not c.tasks.empty():
                    beat = c.tasks.get_nowait()
                    assert beat.kind == "heartbeat" and beat.timeout_s == 5.0
                    sent += 1
        assert sent == 20 * 4  # each client once per 5 s: 4 a second in all, not 20
        beats.cancel()

    asyncio.run(scenario())


def test_a_failure_report_is_bounded_to_one_printable_line():
    text = failure_text("Traceback\n  File x\x1b[2J\x00" + "y" * 100_000)
    assert len(text) <= 2000 and text.isprintable() and text.startswith("Traceback\\n  File x\\x1b[2J\\x00")
    assert failure_text("") == "unspecified error"


def test_an_async_run_forgets_the_failures_of_clients_that_left(tmp_path):
    async def scenario() -> None:
        fed = Federation(tmp_path)
        run, _ = await _async_run(fed)
        for i in range(50):  # clients that fail once and never come back
            client_id = f"gone-{i}"
            fed.connect(client_id)
            run.client_connected(client_id, replaced=False)
            run.report_failure(client_id, "oops")
            fed.ctx.clients.disconnect(fed.conns.pop(client_id))
            run.client_left(client_id)
        assert len(run._trainers._strikes) == 0
        run.close("test over")

    asyncio.run(scenario())
