"""A client that missed a sync round's deadline sits out the next rounds (one, doubling with each miss,
at most eight) instead of making every round wait the full deadline; a delivered update forgives it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from combiner.router import RunRouter
from combiner.stragglers import Stragglers
from fedn.chunking import iter_chunks
from fedn.codec import encode_payload, sha256_hex
from fedn.records import RoundPlan, RoundResult
from fedn.wire import ModelHeaderInfo, UpdateHeaderInfo
from tests.unit.test_combiner_runs import Federation, _arrays, _errors, _finished, _no_heap_trim, _settle  # noqa: F401

TIMEOUT_S = 10.0


class Rounds:
    """Sync rounds through the router, as the reducer asks for them, on the Federation's ManualClock."""

    def __init__(self, fed: Federation) -> None:
        self.fed = fed
        self.router = RunRouter(fed.ctx)
        self.index = 0

    async def start(self, max_clients: int = 0) -> tuple[asyncio.Future, list[str]]:
        """Start the next round; returns its result and the clients that got its train task."""
        self.index += 1
        plan = RoundPlan(
            round_id=f"r{self.index}",
            session_id="s1",
            round_index=self.index,
            model_id=self.fed.model_id,
            timeout_s=TIMEOUT_S,
            max_clients=max_clients,
        )
        result = asyncio.ensure_future(self.router.run_round(plan))
        queues = [conn.tasks for conn in self.fed.conns.values()]
        for _ in range(400):  # the model is read in a thread: real time, bounded
            await asyncio.sleep(0.005)
            if any(q.qsize() for q in queues):
                break
        await _settle()
        asked = sorted(c for c in self.fed.conns if self.fed.tasks(c))
        return result, asked

    async def deliver(self, client_id: str) -> None:
        manifest, data = encode_payload(_arrays(1.0))
        header = UpdateHeaderInfo(
            f"r{self.index}", client_id, "", 1.0, {}, ModelHeaderInfo("", manifest, sha256_hex(data), len(data))
        )

        async def chunks() -> AsyncIterator[bytes]:
            for chunk in iter_chunks(data, 64):
                yield chunk

        await self.router.receive_update(header, chunks())

    async def run(self, deliverers: list[str], max_clients: int = 0) -> tuple[list[str], RoundResult]:
        """One round in which ``deliverers`` (of those asked) send an update and the rest hang."""
        result, asked = await self.start(max_clients)
        for client_id in asked:
            if client_id in deliverers:
                await self.deliver(client_id)
        await _settle()
        if not set(asked) <= set(deliverers):  # someone hangs: the round ends at its deadline
            self.fed.clock.advance(TIMEOUT_S)
        return asked, await _finished(result)


def test_a_client_that_hung_past_the_deadline_sits_out_the_next_round(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="combiner.stragglers")

    async def scenario() -> None:
        fed = Federation(tmp_path)
        fed.connect("a", "b", "slow")
        rounds = Rounds(fed)

        asked, done = await rounds.run(["a", "b"])
        assert asked == ["a", "b", "slow"] and set(_errors(done)) == {"slow"}

        start = fed.clock.now()
        asked, done = await rounds.run(["a", "b", "slow"])
        assert asked == ["a", "b"] and done.num_selected == 2 and done.failures == []
        assert fed.clock.now() == start  # nobody to wait for: the round ended without its deadline
        assert any("slow" in r.getMessage() and "back-off" in r.getMessage() for r in caplog.records)

        asked, done = await rounds.run(["a", "b"])  # back in after one round, and hangs again
        assert asked == ["a", "b", "slow"]
        for _ in range(2):  # the second miss doubles the back-off
            asked, _ = await rounds.run(["a", "b", "slow"])
            assert asked == ["a", "b"]
        asked, done = await rounds.run(["a", "b", "slow"])  # back again, and delivers: forgiven
        assert asked == ["a", "b", "slow"] and done.num_updates == 3
        asked, _ = await rounds.run(["a", "b"])
        assert asked == ["a", "b", "slow"]
        asked, _ = await rounds.run(["a", "b"])  # a miss after a delivery is a first miss again: one round
        assert asked == ["a", "b"]

    asyncio.run(scenario())


def test_clients_on_back_off_are_taken_when_the_plan_needs_them(tmp_path):
    async def scenario() -> None:
        fed = Federation(tmp_path)
        fed.connect("a", "slow")
        rounds = Rounds(fed)
        await rounds.run(["a"])
        asked, _ = await rounds.run(["a"], max_clients=2)  # two asked for, only one not on back-off
        assert asked == ["a", "slow"]

        fed2 = Federation(tmp_path / "2")
        fed2.connect("slow")
        rounds2 = Rounds(fed2)
        await rounds2.run([])
        asked, _ = await rounds2.run([])  # every client: the one there is, rather than an empty round
        assert asked == ["slow"]

    asyncio.run(scenario())


def test_the_back_off_doubles_up_to_its_limit_and_is_bounded_in_clients():
    stragglers = Stragglers(backoff_rounds=1, max_backoff_rounds=8, max_tracked=3)
    skipped = []
    for _ in range(40):
        selected = stragglers.select(["a", "x"], 0, seed=1, round_id="r")
        if "x" not in selected:
            skipped.append(True)
            continue
        skipped.append(False)
        stragglers.missed(["x"])
    runs, count = [], 0
    for s in [*skipped, False]:
        if s:
            count += 1
        elif count:
            runs.append(count)
            count = 0
    assert runs[:5] == [1, 2, 4, 8, 8]
    stragglers.missed([f"c{i}" for i in range(10)])
    assert len(stragglers) == 3
    assert Stragglers(backoff_rounds=0).select(["a"], 0, 1, "r") == ["a"]
