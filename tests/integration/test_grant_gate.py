"""Upload grants: slots in arrival order, queued clients told when their turn comes, unused grants passed on."""

from __future__ import annotations

import asyncio

import pytest

from combiner.grants import GrantGate
from fedn.clock import ManualClock


def _gate(capacity: int, clock: ManualClock | None = None) -> tuple[GrantGate, list[str]]:
    told: list[str] = []
    return GrantGate(capacity, told.append, grant_timeout_s=10.0, clock=clock or ManualClock()), told


def test_grants_in_arrival_order_and_a_release_tells_the_next():
    async def run():
        gate, told = _gate(2)
        assert gate.request("a") and gate.request("b")
        assert not gate.request("c") and not gate.request("d") and gate.waiting == 2
        assert gate.request("a")  # asking again keeps the grant
        async with gate.slot("a"):
            pass
        assert told == ["c"] and gate.waiting == 1
        gate.release("b")  # b gave up (failed or disconnected)
        assert told == ["c", "d"] and gate.waiting == 0
        gate.close()

    asyncio.run(run())


def test_an_upload_without_a_grant_waits_its_turn_inside_the_stream():
    async def run():
        gate, told = _gate(1)
        assert gate.request("a")
        assert not gate.request("b")
        order: list[str] = []

        async def upload(client: str) -> None:
            async with gate.slot(client):
                order.append(client)
                await asyncio.sleep(0)

        direct = asyncio.create_task(upload("direct"))  # never asked: queued behind b
        await asyncio.sleep(0)  # it runs up to its wait for a slot
        assert gate.waiting == 2
        await upload("a")
        assert told == ["b"]
        await upload("b")
        await direct
        assert order == ["a", "b", "direct"]
        gate.close()

    asyncio.run(run())


def test_an_unused_grant_passes_on_and_a_cancelled_waiter_leaves_the_queue():
    async def run():
        clock = ManualClock()
        gate, told = _gate(1, clock)
        assert gate.request("a")
        assert not gate.request("b")
        clock.advance(9.0)
        assert told == []
        clock.advance(2.0)  # a never started its upload: its grant lapses on the clock's timer
        assert told == ["b"]
        assert not gate.request("c")
        waiter = asyncio.create_task(gate.slot("d").__aenter__())
        await asyncio.sleep(0)  # it runs up to its wait for a slot
        assert gate.waiting == 2
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert gate.waiting == 1
        gate.close()

    asyncio.run(run())
