"""Rebalancing (a combiner that joins or comes back gets clients: the loaded ones shed idle clients, which
ask the reducer again) and the clients of a dead combiner listed in the round's failures, sync and async.
Manual clocks and fake gateways; no network."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import httpx
import pytest

from combiner.async_run import AsyncRun
from combiner.clients import SHED_MESSAGE
from combiner.router import RunRouter
from fedn.api_client import ReducerAPI
from fedn.chunking import iter_chunks
from fedn.clock import ManualClock
from fedn.codec import encode_payload, sha256_hex
from fedn.errors import DeadlineExceeded, Unavailable
from fedn.records import CombinerRecord, RoundPlan, RoundResult, SessionStatus
from fedn.wire import ModelHeaderInfo, UpdateHeaderInfo
from reducer.api import ApiContext
from reducer.app import create_app
from reducer.registry import CombinerRegistry, shed_count
from tests.unit.test_combiner_runs import Federation, _arrays, _async_plan, _finished, _no_heap_trim, _settle  # noqa: F401
from tests.unit.test_reducer_async import _setup as _async_setup
from tests.unit.test_reducer_controller import FakeGateway
from tests.unit.test_reducer_controller import _setup as _sync_setup

# -- how many to shed ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("load", "loads", "shed"),
    [
        (4, [4, 0], 2),  # a combiner came back empty: half of them go
        (3, [3, 0], 1),
        (2, [2, 0], 1),
        (1, [1, 0], 0),  # a spread of one client is balanced enough
        (0, [4, 0], 0),  # the empty one sheds nothing
        (2, [2, 2], 0),
        (5, [5, 3], 1),
        (100, [100, 90], 0),  # within 10% of the mean
        (100, [100, 80], 10),
        (5, [5, 5, 0], 1),  # down to the mean, rounded up
        (4, [4], 0),  # alone: nowhere to go
    ],
)
def test_shed_count_evens_out_the_loads_down_to_the_mean_rounded_up(load, loads, shed):
    assert shed_count(load, loads) == shed


def _registry(stores, clock: ManualClock, **options) -> CombinerRegistry:
    state, _ = stores
    registry = CombinerRegistry(state, combiner_timeout_s=10.0, clock=clock, **options)
    for cid in ("a", "b"):
        registry.register(cid, cid, f"{cid}:1")
    return registry


def test_a_combiner_that_comes_back_empty_gets_half_the_clients_by_rebalancing(stores):
    clock = ManualClock(100.0)
    registry = _registry(stores, clock, rebalance_interval_s=5.0)
    registry.heartbeat("a", ["c1", "c2", "c3", "c4"])
    registry.heartbeat("b", [])
    assert registry.to_shed("b") == 0
    assert registry.to_shed("a") == 2
    assert registry.to_shed("a") == 0, "told once per rebalance interval"

    # the two shed clients ask again: a still lists them until its next heartbeat, so both go to b
    assert [registry.assign(c, c)["combiner_id"] for c in ("c4", "c3")] == ["b", "b"]
    clock.advance(5.0)
    registry.heartbeat("a", ["c1", "c2"])  # b has not heartbeated yet: its two assigned clients count
    assert registry.to_shed("a") == 0 and registry.to_shed("b") == 0
    registry.heartbeat("b", ["c3", "c4"])
    assert registry.to_shed("a") == 0


def test_no_shedding_when_rebalancing_is_off_or_the_empty_combiner_is_dead(stores):
    clock = ManualClock(100.0)
    off = _registry(stores, clock, rebalance=False)
    off.heartbeat("a", ["c1", "c2", "c3", "c4"])
    off.heartbeat("b", [])
    assert off.to_shed("a") == 0

    registry = _registry(stores, clock)
    registry.heartbeat("a", ["c1", "c2", "c3", "c4"])
    registry.heartbeat("b", [])
    registry.mark_unreachable("b", "connection refused")
    assert registry.to_shed("a") == 0, "clients are not sent away towards a combiner that is not live"
    clock.advance(11.0)
    registry.heartbeat("a", ["c1", "c2", "c3", "c4"])  # b missed its heartbeats too
    assert registry.to_shed("a") == 0


def test_the_heartbeat_answer_says_how_many_to_shed(stores):
    state, models = stores
    registry = _registry(stores, ManualClock(100.0))
    http = create_app(ApiContext(state, models, registry, None, max_model_bytes=1 << 20)).test_client()
    assert http.put("/api/v1/combiners/b/heartbeat", json={"client_ids": []}).get_json()["shed"] == 0
    answer = http.put("/api/v1/combiners/a/heartbeat", json={"client_ids": ["c1", "c2", "c3", "c4"]}).get_json()
    assert answer == {"status": "online", "num_clients": 4, "shed": 2, "revoked": []}


@pytest.mark.parametrize(
    ("body", "shed"),
    [({"status": "online", "num_clients": 4, "shed": 2}, 2), ({"status": "online", "num_clients": 4}, 0)],
)
def test_the_api_client_reads_shed_and_an_older_reducer_means_none(body, shed):
    api = ReducerAPI("http://reducer.invalid")
    api._http = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(200, json=body)))
    assert api.combiner_heartbeat("a", ["c1"])["shed"] == shed
    api.close()


# -- the combiner sheds idle clients only --------------------------------------------------------


async def _stream_ended(fed: Federation, client_id: str) -> str:
    """The status its TaskStream would end with: the error its queued tasks raise ("" if none does)."""
    queue = fed.conns[client_id].tasks
    while not queue.empty():
        try:
            await queue.get()
        except Unavailable as exc:
            return exc.message
    return ""


def test_a_running_sync_round_keeps_its_clients_and_only_idle_ones_are_shed(tmp_path):
    async def scenario() -> None:
        fed = Federation(tmp_path)
        fed.connect("a", "b", "c")
        router = RunRouter(fed.ctx)
        assert router.idle_client_ids() == ["c", "b", "a"], "no run: every client is idle, latest first"
        plan = RoundPlan(round_id="r1", session_id="s1", round_index=1, model_id=fed.model_id, timeout_s=10.0)
        plan = plan.model_copy(update={"max_clients": 2})
        result = asyncio.ensure_future(router.run_round(plan))
        for _ in range(400):  # the model is read in a thread: real time, bounded
            await asyncio.sleep(0.005)
            if any(conn.tasks.qsize() for conn in fed.conns.values()):
                break
        await _settle()
        fed.connect("late")  # joined after the round chose its clients
        assert router.idle_client_ids() == ["late"], "every candidate of the running round is held"

        assert fed.ctx.clients.shed(router.idle_client_ids()[:3]) == ["late"]
        assert await _stream_ended(fed, "late") == SHED_MESSAGE
        assert router.connected_client_ids() == ["a", "b", "c"] and len(fed.ctx.clients) == 3
        router.disconnect(fed.conns["late"])  # its stream closed

        asked = [c for c in "abc" if fed.tasks(c)]
        assert len(asked) == 2
        for client_id in asked:
            await router.receive_update(*_update(fed, "r1", client_id))
        done = await _finished(result)
        assert done.num_updates == 2 and done.failures == []
        assert router.idle_client_ids() == ["c", "b", "a"], "the round ended: its clients are idle again"

    asyncio.run(scenario())


def _update(
    fed: Federation, round_id: str, client_id: str, base: str = ""
) -> tuple[UpdateHeaderInfo, AsyncIterator[bytes]]:
    manifest, data = encode_payload(_arrays(1.0))
    header = UpdateHeaderInfo(
        round_id, client_id, base, 1.0, {}, ModelHeaderInfo("", manifest, sha256_hex(data), len(data))
    )

    async def chunks() -> AsyncIterator[bytes]:
        for chunk in iter_chunks(data, 64):
            yield chunk

    return header, chunks()


def test_an_async_run_keeps_its_trainers_and_a_client_waiting_for_a_slot_can_be_shed(tmp_path):
    async def scenario() -> None:
        fed = Federation(tmp_path)
        router = RunRouter(fed.ctx)
        for client_id in ("a", "b"):
            fed.conns[client_id] = router.connect(client_id, client_id)
        plan = _async_plan(fed.model_id, 1, max_clients=1)
        result = asyncio.ensure_future(router.run_round(plan))
        for _ in range(400):
            await asyncio.sleep(0.005)
            if any(conn.tasks.qsize() for conn in fed.conns.values()):
                break
        await _settle()
        trainer = next(c for c in "ab" if fed.tasks(c))
        waiting = "b" if trainer == "a" else "a"
        assert router.idle_client_ids() == [waiting], "the client with a train task is held"

        assert fed.ctx.clients.shed([*router.idle_client_ids(), trainer][:1]) == [waiting]
        assert await _stream_ended(fed, waiting) == SHED_MESSAGE
        router.disconnect(fed.conns[waiting])
        run = router._run
        assert isinstance(run, AsyncRun) and not run.closed
        await router.receive_update(*_update(fed, run.run_id, trainer, fed.model_id))
        assert [t.kind for t in [*fed.tasks(trainer)]] == ["train"], "the trainer carries on"
        router.close()
        await _finished(result)

    asyncio.run(scenario())


# -- the clients of a dead combiner are listed ------------------------------------------------------


def test_every_client_a_failed_combiner_held_is_listed_and_may_not_have_been_selected(stores):
    state, _ = stores
    controller, _, session, registry, _ = _sync_setup(
        stores, {"a": (1.0, 10.0), "b": DeadlineExceeded("combiner b: DEADLINE_EXCEEDED")}, min_clients=1
    )
    registry.heartbeat("b", [f"b-c{i}" for i in range(6)])
    session = session.model_copy(update={"rounds": 1, "fraction": 0.5, "seed": 3})
    final = controller.run_session(session)
    assert final.status == SessionStatus.DONE
    failed = {f.client_id: f.error for f in state.list_rounds(session.id)[0].failures if f.combiner_id == "b"}
    assert failed.pop("") == "combiner b: DEADLINE_EXCEEDED"
    assert sorted(failed) == [f"b-c{i}" for i in range(6)], "every client it held, not a guess of the sample"
    assert all(
        e.startswith("combiner failed: combiner b: DEADLINE_EXCEEDED (client of that combiner;")
        for e in failed.values()
    )
    assert all("this one may not have been" in e for e in failed.values())


def test_an_async_session_lists_the_clients_of_an_unreachable_combiner_in_the_next_flush(stores):
    state, _ = stores
    controller, gateway, session = _async_setup(stores, {"a": 1.0, "b": Unavailable("combiner b: UNAVAILABLE")})
    final = controller.run_session(session)
    assert final.status == SessionStatus.DONE and final.rounds_done == 4
    rounds = state.list_rounds(session.id)
    assert [r.index for r in rounds] == [1, 2, 3, 4], "one record per version"
    failed = [(r.index, f.client_id, f.error) for r in rounds for f in r.failures if f.combiner_id == "b"]
    assert sorted(c for _, c, _ in failed) == ["", "b-c1", "b-c2"], "each once, with the combiner's own failure"
    assert len({i for i, _, _ in failed}) == 1
    errors = {c: e for _, c, e in failed}
    assert errors[""] == "combiner b: UNAVAILABLE"
    assert errors["b-c1"] == "combiner failed: combiner b: UNAVAILABLE (client of that combiner)"
    assert [c for c, _ in gateway.plans].count("b") == 1, "unreachable: no second call until it heartbeats"


# -- when sheds are ordered ----------------------------------------------------------------------


def test_a_freshly_loaded_registry_orders_no_shed_until_every_live_combiner_has_heartbeated(stores):
    state, _ = stores
    clock = ManualClock(100.0)
    before = _registry(stores, clock)
    before.register("c", "c", "c:1")
    for cid, clients in (("a", ["c1", "c2"]), ("b", ["c3", "c4"]), ("c", [])):
        before.heartbeat(cid, clients)

    registry = CombinerRegistry(state, combiner_timeout_s=10.0, clock=clock)  # the reducer restarted
    registry.load()
    for cid in ("a", "b"):
        registry.register(cid, cid, f"{cid}:1")
    registry.heartbeat("a", ["c1", "c2"])  # b registered again, but its clients are not known yet
    assert registry.to_shed("a") == 0, "b's load is unknown: it only looks empty"
    registry.heartbeat("b", [])
    assert registry.to_shed("a") == 0, "c was online before the restart and has not reported yet"
    clock.advance(5.0)
    registry.heartbeat("a", ["c1", "c2"])
    registry.heartbeat("b", [])
    assert registry.to_shed("a") == 0
    clock.advance(6.0)  # c stayed silent for combiner_timeout_s: it is not live anyway
    registry.heartbeat("a", ["c1", "c2"])
    registry.heartbeat("b", [])
    assert registry.to_shed("a") == 1


def test_no_shed_is_ordered_while_a_round_is_in_progress_and_sheds_resume_after_it(stores):
    clock = ManualClock(100.0)
    registry = _registry(stores, clock)
    registry.heartbeat("a", ["c1", "c2", "c3", "c4"])
    registry.heartbeat("b", [])
    with registry.round_in_progress():
        with registry.round_in_progress():  # e.g. two sessions' rounds
            assert registry.to_shed("a") == 0
        assert registry.to_shed("a") == 0
    assert registry.to_shed("a") == 2, "between rounds, the registry rebalances"


def test_the_next_round_waits_bounded_for_shed_clients_to_reappear(stores):
    clock = ManualClock(100.0)
    registry = _registry(stores, clock, rebalance_interval_s=5.0)
    registry.heartbeat("a", ["c1", "c2", "c3", "c4"])
    registry.heartbeat("b", [])
    assert registry.to_shed("a") == 2  # between rounds
    stop = threading.Event()
    settled: list[bool] = []
    waiter = threading.Thread(target=lambda: settled.append(registry.wait_for_sheds(stop)))
    with registry.round_in_progress():
        waiter.start()
        waiter.join(0.05)
        assert waiter.is_alive(), "a's count still includes the two it sheds"
        registry.heartbeat("a", ["c1", "c2"])
        registry.heartbeat("b", ["c3"])
        waiter.join(0.05)
        assert waiter.is_alive(), "one of them has not reappeared yet"
        registry.heartbeat("b", ["c3", "c4"])
        waiter.join(5.0)
        assert settled == [True]
        assert registry.wait_for_sheds(stop) is True, "nothing ordered since: no wait"

    registry.heartbeat("a", ["c1", "c2", "c3", "c4"])  # the two went back (say): b holds none
    registry.heartbeat("b", [])
    clock.advance(5.0)
    registry.heartbeat("a", ["c1", "c2", "c3", "c4"])
    registry.heartbeat("b", [])
    assert registry.to_shed("a") == 2
    registry.heartbeat("a", ["c1", "c2"])
    registry.heartbeat("b", [])  # the shed ones never come back
    waiter = threading.Thread(target=lambda: settled.append(registry.wait_for_sheds(stop)))
    waiter.start()
    waiter.join(0.05)
    assert waiter.is_alive()
    clock.advance(5.0)
    waiter.join(5.0)
    assert not waiter.is_alive() and settled[-1] is False, "bounded by rebalance_interval_s on the clock"


class _ShedAskingGateway(FakeGateway):
    """Asks the registry how many clients ``a`` should shed while each round runs."""

    registry: CombinerRegistry

    def run_round(self, combiner: CombinerRecord, plan: RoundPlan, timeout_s: float) -> RoundResult:
        self.sheds = [*getattr(self, "sheds", []), self.registry.to_shed("a")]
        return super().run_round(combiner, plan, timeout_s)


def test_a_sync_session_orders_no_shed_during_its_rounds(stores):
    controller, gateway, session, registry, _ = _sync_setup(
        stores, {"a": (1.0, 10.0)}, min_clients=1, gateway_class=_ShedAskingGateway
    )
    gateway.registry = registry
    registry.register("b", "b", "b:1")
    registry.heartbeat("a", ["c1", "c2", "c3", "c4"])
    registry.heartbeat("b", [])
    final = controller.run_session(session)
    assert final.status == SessionStatus.DONE and final.rounds_done == 2
    assert gateway.sheds == [0, 0], "planned on a's four clients: none of them is sent away meanwhile"
    assert registry.to_shed("a") == 2, "the session is over"
