"""A combiner's finished partial carries its RoundResult, so it is found and used after a restart, never
recomputed (a restarted combiner asked again for the round) or dropped (a restarted reducer whose
combiner did not come back)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest

from combiner.clients import ClientHub
from combiner.model_cache import ModelCache
from combiner.router import RunRouter
from combiner.run import RunContext
from combiner.staging import UploadStager
from fedn import heap
from fedn.chunking import iter_chunks
from fedn.clock import ManualClock
from fedn.codec import decode_model, encode_model, encode_model_chunks, encode_payload, read_model_metadata, sha256_hex
from fedn.errors import InvalidModel
from fedn.models import model_key, partial_key, partial_metadata, read_metadata, save_model, stored_result
from fedn.records import ClientFailureRecord, RoundPlan, RoundResult, RoundStatus, SessionStatus
from fedn.store import LocalModelStore
from fedn.wire import ModelHeaderInfo, UpdateHeaderInfo
from tests.unit.test_reducer_controller import _advance_until_done, _run_in_thread
from tests.unit.test_reducer_crash import _interrupted_round

SETTLE_S = 10.0  # a bound on real time for work handed to threads, never a wait to assert


@pytest.fixture(autouse=True)
def _no_heap_trim(monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding libc's malloc_trim runs ldconfig, a process the unit guard forbids."""
    monkeypatch.setattr(heap, "trim", lambda: False)


def _arrays(value: float) -> dict[str, np.ndarray]:
    return {"w": np.full((4, 3), value, np.float32), "b": np.arange(3, dtype=np.float32) + value}


# -- the codec and the model store --------------------------------------------------------


def test_metadata_is_written_by_both_encoders_and_read_from_the_header_alone():
    metadata = {"fedn.round_result": '{"x": 1}', "note": "é"}
    whole = encode_model(_arrays(1.0), metadata)
    chunked = b"".join(bytes(c) for c in encode_model_chunks(_arrays(1.0), metadata))
    for blob in (whole, chunked):
        header_only = blob[: len(blob) - 2 * 12 * 4 // 2 - 3 * 4]  # every tensor byte cut off
        assert read_model_metadata(header_only) == metadata
        np.testing.assert_array_equal(decode_model(blob)["w"], np.full((4, 3), 1.0))
    assert read_model_metadata(encode_model(_arrays(1.0))) == {}
    with pytest.raises(InvalidModel, match="strings"):
        encode_model(_arrays(1.0), {"n": 3})  # type: ignore[dict-item]


def test_a_stored_result_must_describe_its_own_partial(tmp_path: Path):
    models = LocalModelStore(tmp_path / "models")
    key = partial_key("r1", "c1")
    good = RoundResult(round_id="r1", combiner_id="c1", partial_key=key, total_weight=3.0, num_updates=2)
    models.put(key, encode_model(_arrays(1.0), partial_metadata(good)))
    assert read_metadata(models, key).keys() == {"fedn.round_result"}
    assert stored_result(models, "r1", "c1") == good
    assert stored_result(models, "r1", "c2") is None  # nothing stored
    models.put(partial_key("r0", "c1"), encode_model(_arrays(1.0)))
    assert stored_result(models, "r0", "c1") is None  # stored without a result
    for lie in ({"round_id": "r2"}, {"total_weight": float("nan")}, {"total_weight": 0.0}, {"num_updates": 0}):
        models.put(key, encode_model(_arrays(1.0), partial_metadata(good.model_copy(update=lie))))
        with pytest.raises(InvalidModel):
            stored_result(models, "r1", "c1")


# -- A: a restarted combiner asked again for a round it finished -----------------------------


class Combiner:
    """One combiner process: its router on a ManualClock; a "restart" is a new one on the same store."""

    def __init__(self, store: LocalModelStore, clock: ManualClock) -> None:
        ctx = RunContext(
            combiner_id="comb",
            clients=ClientHub(clock),
            models=ModelCache(store, clock, grant_timeout_s=5.0),
            stager=UploadStager(clock, grant_timeout_s=5.0),
            clock=clock,
        )
        self.router = RunRouter(ctx)
        self.conns = {c: ctx.clients.connect(c, c)[0] for c in ("a", "b")}

    def trains_asked(self) -> list[str]:
        asked = []
        for client_id, conn in self.conns.items():
            tasks = [conn.tasks.get_nowait() for _ in range(conn.tasks.qsize())]
            asked += [client_id for t in tasks if t.kind == "train"]
        return asked

    async def upload(self, round_id: str, client_id: str, value: float, weight: float) -> None:
        manifest, data = encode_payload(_arrays(value))
        model = ModelHeaderInfo("", manifest, sha256_hex(data), len(data))
        header = UpdateHeaderInfo(round_id, client_id, "", weight, {"loss": value}, model)

        async def chunks() -> AsyncIterator[bytes]:
            for chunk in iter_chunks(data, 64):
                yield chunk

        await self.router.receive_update(header, chunks())


async def _until(condition: Callable[[], bool]) -> bool:
    """Let the loop and the threads it handed work to (store reads) run until ``condition`` holds, bounded
    in real time; the clock does not move, so no deadline passes meanwhile."""
    for _ in range(int(SETTLE_S / 0.01)):
        if condition():
            return True
        await asyncio.sleep(0.01)
    return condition()


def test_a_restarted_combiner_returns_the_stored_result_without_asking_its_clients(tmp_path: Path):
    async def scenario() -> None:
        clock, store = ManualClock(), LocalModelStore(tmp_path / "models")
        model_id = save_model(store, _arrays(0.0)).id
        plan = RoundPlan(round_id="r1", session_id="s1", round_index=1, model_id=model_id, timeout_s=10.0)
        first = Combiner(store, clock)
        running = asyncio.ensure_future(first.router.run_round(plan))
        assert await _until(lambda: all(conn.tasks.qsize() for conn in first.conns.values()))
        assert sorted(first.trains_asked()) == ["a", "b"]
        await first.upload("r1", "a", 2.0, weight=1.0)
        await first.upload("r1", "b", 5.0, weight=3.0)
        done = await asyncio.wait_for(running, SETTLE_S)
        assert (done.num_updates, done.total_weight, done.client_ids) == (2, 4.0, ["a", "b"])
        blob = store.get(done.partial_key)

        again = Combiner(store, clock)  # the combiner restarted: nothing of the round in memory
        answer = asyncio.ensure_future(again.router.run_round(plan))
        assert await _until(answer.done), "the round was started afresh instead of answered from the store"
        assert answer.result() == done
        assert again.trains_asked() == []
        assert store.get(done.partial_key) == blob
        np.testing.assert_allclose(decode_model(blob)["w"], np.full((4, 3), 4.25))

    asyncio.run(scenario())


# -- B: a restarted reducer whose combiner does not come back merges its stored partial -------


def _store_partial(models: LocalModelStore, round_id: str, combiner_id: str, value: float, weight: float) -> None:
    """What combiner ``combiner_id`` stored when its part of the round ended, before the reducer died."""
    key = partial_key(round_id, combiner_id)
    result = RoundResult(
        round_id=round_id,
        combiner_id=combiner_id,
        partial_key=key,
        total_weight=weight,
        num_selected=2,
        num_updates=2,
        failures=[ClientFailureRecord(client_id=f"{combiner_id}-c3", combiner_id=combiner_id, error="oom")],
        client_ids=[f"{combiner_id}-c1", f"{combiner_id}-c2"],
    )
    models.put(key, encode_model_chunks({"w": np.full(4, value)}, partial_metadata(result)))


def _resume_without_b(stores, store_b: Callable[[LocalModelStore, str], None] | None) -> tuple:
    """A reducer resuming round 1 of a session that ran on a and b, where b stored its partial
    (``store_b(models, round_id)``) before the reducer died; only a comes back, b never does."""
    state, models = stores
    clock = ManualClock(1000.0)
    controller, gateway, registry, session, round_ = _interrupted_round(stores, clock, resume_wait_s=20.0)
    if store_b is not None:
        store_b(models, round_.id)
    thread, out = _run_in_thread(controller, session)
    thread.join(0.2)
    for _ in range(25):  # a heartbeats, b does not: the wait for it ends at resume_wait_s
        clock.advance(1.0)
        registry.heartbeat("a", ["a-c1", "a-c2"])
        thread.join(0.02)
    _advance_until_done(clock, thread)
    return out[0], gateway, state.get_round(round_.id)


def test_a_resumed_reducer_merges_the_stored_partial_of_a_combiner_that_did_not_come_back(stores):
    _, models = stores
    session, gateway, done = _resume_without_b(stores, lambda m, r: _store_partial(m, r, "b", 4.0, 30.0))
    assert session.status == SessionStatus.DONE
    assert [c for c, _ in gateway.plans] == ["a"], "b is not asked: it is not back"
    assert done.status == RoundStatus.DONE and done.merged_from_store == ["b"]
    assert (done.total_weight, done.num_updates) == (40.0, 4)
    assert not [f for f in done.failures if f.combiner_id == "b" and not f.client_id], "b's partial was merged"
    assert any(f.client_id == "b-c3" and f.error == "oom" for f in done.failures)
    # a's partial is 1.0 with weight 10, b's 4.0 with weight 30: (10 + 120) / 40
    np.testing.assert_allclose(decode_model(models.get(model_key(session.model_id)))["w"], np.full(4, 3.25))


def _lying_partial(models: LocalModelStore, round_id: str) -> None:
    """A partial at b's key whose stored result describes another round (and claims a huge weight)."""
    lie = RoundResult(
        round_id="other", combiner_id="b", partial_key=partial_key("other", "b"), total_weight=1e9, num_updates=2
    )
    models.put(partial_key(round_id, "b"), encode_model({"w": np.full(4, 9.0)}, partial_metadata(lie)))


@pytest.mark.parametrize("store_b", [None, _lying_partial], ids=["nothing stored", "result of another round"])
def test_a_combiner_that_did_not_come_back_without_a_usable_partial_is_a_failure(stores, store_b):
    _, models = stores
    session, _, done = _resume_without_b(stores, store_b)
    assert session.status == SessionStatus.DONE  # a's two updates reach min_clients
    assert done.merged_from_store == [] and done.total_weight == 10.0
    assert any(f.combiner_id == "b" and not f.client_id and "did not come back" in f.error for f in done.failures)
    np.testing.assert_allclose(decode_model(models.get(model_key(session.model_id)))["w"], np.full(4, 1.0))
