"""Fixtures that run real servers in-process on 127.0.0.1 and free ports."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from combiner.server import CombinerServer
from combiner.settings import CombinerSettings
from fedn.clock import Clock, ManualClock
from fedn.codec import decode_model
from fedn.models import save_model
from fedn.store import LocalModelStore
from fedn.v1 import fedn_pb2_grpc as pb_grpc


class LoopThread:
    """An asyncio loop in a background thread, for aio servers driven from sync tests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro, timeout_s: float = 60.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def submit(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def advance(self, clock: ManualClock, seconds: float) -> None:
        """Move ``clock`` on the loop's thread, where the timers it fires must run."""

        async def advance() -> None:
            clock.advance(seconds)

        self.run(advance())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture
def model_store(tmp_path: Path) -> LocalModelStore:
    return LocalModelStore(tmp_path / "models")


@pytest.fixture
def global_model(model_store: LocalModelStore) -> tuple[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    arrays = {
        "fc.weight": rng.standard_normal((30, 20)).astype(np.float32),
        "fc.bias": np.zeros(20, np.float32),
        "steps": np.array(3, np.int64),
    }
    record = save_model(model_store, arrays)
    stored = decode_model(model_store.get(record.key))  # the manifest order clients receive
    return record.id, {k: arrays[k] for k in stored}


@pytest.fixture
def combiner(loop_thread: LoopThread, model_store: LocalModelStore) -> Iterator[CombinerServer]:
    settings = CombinerSettings(
        name="combiner-t",
        host="127.0.0.1",
        port=0,
        heartbeat_interval_s=0.2,
        max_update_bytes=64 * 1024,
        chunk_bytes=1024,
    )
    server = CombinerServer(settings, model_store, reducer=None)
    loop_thread.run(server.start())
    yield server
    loop_thread.run(server.stop(0.5))


@pytest.fixture
def stub(combiner: CombinerServer) -> Iterator[pb_grpc.CombinerStub]:
    channel = grpc.insecure_channel(f"127.0.0.1:{combiner.port}")
    yield pb_grpc.CombinerStub(channel)
    channel.close()


@pytest.fixture
def start_combiner(loop_thread: LoopThread):
    """Start combiners with settings (and a clock) of a test's own; each is stopped afterwards.
    Returns (server, stub)."""
    started: list[tuple[CombinerServer, grpc.Channel]] = []

    def start(store, clock: Clock | None = None, **settings) -> tuple[CombinerServer, pb_grpc.CombinerStub]:
        fields = {"name": "combiner-x", "host": "127.0.0.1", "port": 0, "heartbeat_interval_s": 0.2, **settings}
        server = CombinerServer(CombinerSettings(**fields), store, reducer=None, clock=clock)
        loop_thread.run(server.start())
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        started.append((server, channel))
        return server, pb_grpc.CombinerStub(channel)

    yield start
    for server, channel in started:
        channel.close()
        loop_thread.run(server.stop(0.5))
