"""Load-test a real deployment: a reducer and combiners as processes, N emulated clients over real gRPC.

The emulated clients do what the client runtime does (ask the reducer for a combiner, open a task
stream, download the model, upload an update) but train by adding a constant, so the numbers are
those of the framework: assignment, streaming, validation, folding, merging and the stores. Many
clients share one process and a few channels, which is how 1000 fit on two cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import numpy as np

from fedn import wire
from fedn.chunking import ChunkAssembler
from fedn.codec import decode_payload, encode_model
from fedn.errors import InvalidArgument, Unavailable
from fedn.launcher import FederationSpec, LocalFederation
from fedn.records import RoundStatus, SessionStatus
from fedn.sim.memory import peak_rss_mb, rss_mb
from fedn.v1 import fedn_pb2 as pb
from fedn.v1 import fedn_pb2_grpc as pb_grpc

__all__ = ["LoadResult", "run_load"]

CLIENTS_PER_CHANNEL = 100
# gRPC's default 4 MiB message cap does not apply: models travel in 1 MiB chunks


@dataclass
class LoadResult:
    clients: int
    combiners: int
    params: int
    round_s: list[float]
    combiner_rss_idle_mb: list[float]
    combiner_rss_connected_mb: list[float]
    combiner_rss_peak_mb: list[float]
    reducer_rss_peak_mb: float

    def row(self) -> dict:
        steady = self.round_s[1:] or self.round_s
        return {
            "bench": "grpc_load",
            "clients": self.clients,
            "combiners": self.combiners,
            "params": self.params,
            "model_mb": round(self.params * 4 / 2**20, 1),
            "rounds": len(self.round_s),
            "s_per_round": [round(t, 3) for t in self.round_s],
            "s_per_round_steady": round(float(np.median(steady)), 3),
            "combiner_rss_mb_idle": [round(x, 1) for x in self.combiner_rss_idle_mb],
            "combiner_rss_mb_connected": [round(x, 1) for x in self.combiner_rss_connected_mb],
            "combiner_rss_mb_peak": [round(x, 1) for x in self.combiner_rss_peak_mb],
            "reducer_rss_mb_peak": round(self.reducer_rss_peak_mb, 1),
        }


async def _emulated_client(stub: pb_grpc.CombinerStub, client_id: str, connected: Callable[[], None]) -> None:
    call = stub.TaskStream(pb.TaskStreamRequest(client_id=client_id, client_name=client_id))
    first = True
    waiting: tuple[str, list[pb.UpdateChunk]] | None = None  # an update waiting for its upload grant
    try:
        async for msg in call:
            if first:
                connected()
                first = False
            task = wire.task_from_proto(msg)
            if task.kind == "upload_grant" and waiting is not None and waiting[0] == task.round_id:
                await stub.UploadUpdate(iter(waiting[1]))
                waiting = None
            if task.kind != "train":
                continue
            stream = stub.DownloadModel(pb.DownloadModelRequest(model_id=task.model_id, client_id=client_id))
            header, assembler = None, None
            async for msg in stream:
                if header is None:
                    header = wire.model_header_from_proto(msg.header)
                    assembler = ChunkAssembler(header.payload_bytes, header.sha256)
                else:
                    assembler.add(msg.data)
            arrays = decode_payload(header.tensors, assembler.finish())
            update = {k: v + v.dtype.type(1e-3) for k, v in arrays.items()}  # the trivial train step
            del arrays, assembler
            messages = list(
                wire.update_messages(task.round_id, client_id, task.model_id, 10.0, {"train_loss": 1.0}, update)
            )
            del update
            size = messages[0].header.model.payload_bytes
            grant = await stub.RequestUpload(
                pb.UploadRequest(round_id=task.round_id, client_id=client_id, payload_bytes=size)
            )
            if grant.granted:  # as the client runtime does: upload now, or when the grant comes down the stream
                await stub.UploadUpdate(iter(messages))
            else:
                waiting = (task.round_id, messages)
    except grpc.aio.AioRpcError:
        pass
    finally:
        call.cancel()


class _Clients:
    """N emulated clients on an event loop in a background thread."""

    def __init__(self, assignments: list[tuple[str, str]]) -> None:
        self.assignments = assignments
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="emulated-clients", daemon=True)
        self.connected = 0
        self.channels: list[grpc.aio.Channel] = []
        self.tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(60)

    async def _start(self) -> None:
        by_address: dict[str, list[str]] = defaultdict(list)
        for client_id, address in self.assignments:
            by_address[address].append(client_id)

        def connected() -> None:
            self.connected += 1

        for address, ids in by_address.items():
            channels = [grpc.aio.insecure_channel(address) for _ in range(max(1, len(ids) // CLIENTS_PER_CHANNEL))]
            self.channels.extend(channels)
            for i, client_id in enumerate(ids):
                stub = pb_grpc.CombinerStub(channels[i % len(channels)])
                self.tasks.append(asyncio.ensure_future(_emulated_client(stub, client_id, connected)))

    def stop(self) -> None:
        async def _stop() -> None:
            for t in self.tasks:
                t.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            for c in self.channels:
                await c.close()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_stop(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def run_load(
    clients: int,
    combiners: int = 2,
    params: int = 100_000,
    rounds: int = 3,
    round_timeout_s: float = 300.0,
    on_event: Callable[[str], None] | None = None,
) -> LoadResult:
    """Start a reducer and ``combiners`` combiners, connect ``clients`` emulated clients, run ``rounds`` rounds."""
    if clients < 1 or combiners < 1 or params < 1 or rounds < 1:
        raise InvalidArgument("clients, combiners, params and rounds must be at least 1")
    say = on_event or (lambda message: None)
    spec = FederationSpec(client="", num_combiners=combiners, num_clients=0, log_level="WARNING")
    with LocalFederation(spec, on_event=say) as fed:
        combiner_pids = [p.pid for p in fed.combiners]
        idle = [rss_mb(pid) for pid in combiner_pids]
        peaks = list(idle)
        reducer_peak = rss_mb(fed.reducer.pid) if fed.reducer and fed.reducer.pid else 0.0
        with fed.api() as api:
            seed = api.upload_model(encode_model({"w": np.zeros(params, dtype=np.float32)}))
            assignments = []
            for i in range(clients):
                a = api.assign_client(f"load-{i}")
                assignments.append((a["client_id"], a["combiner_address"]))
        emulated = _Clients(assignments)
        emulated.start()
        try:
            fed.wait_for_clients(clients, timeout_s=max(60.0, clients * 0.2))
            time.sleep(1.0)  # let the last streams settle
            connected = [rss_mb(pid) for pid in combiner_pids]
            with fed.api() as api:
                session = api.start_session(
                    rounds=rounds, round_timeout_s=round_timeout_s, min_clients=clients, model_id=seed.id
                )
                say(f"session {session.id}: {rounds} rounds with {clients} clients")
                deadline = time.monotonic() + rounds * (round_timeout_s + 30)
                while time.monotonic() < deadline:
                    peaks = [max(p, rss_mb(pid)) for p, pid in zip(peaks, combiner_pids, strict=True)]
                    if fed.reducer and fed.reducer.pid:
                        reducer_peak = max(reducer_peak, rss_mb(fed.reducer.pid))
                    session = api.get_session(session.id)
                    if session.status in (SessionStatus.DONE, SessionStatus.FAILED):
                        break
                    time.sleep(0.05)
                if session.status != SessionStatus.DONE:
                    raise Unavailable(f"load session ended {session.status}: {session.error}")
                done = [r for r in api.list_rounds(session.id) if r.status == RoundStatus.DONE]
                done.sort(key=lambda r: r.index)
            # the kernel's high-water marks catch the spikes that fall between two samples
            peaks = [max(p, peak_rss_mb(pid)) for p, pid in zip(peaks, combiner_pids, strict=True)]
            if fed.reducer and fed.reducer.pid:
                reducer_peak = max(reducer_peak, peak_rss_mb(fed.reducer.pid))
        finally:
            emulated.stop()
    if len(done) != rounds or any(r.num_updates != clients for r in done):
        raise Unavailable(f"expected {rounds} rounds of {clients} updates, got {[r.num_updates for r in done]}")
    return LoadResult(
        clients=clients,
        combiners=combiners,
        params=params,
        round_s=[r.duration_s or 0.0 for r in done],
        combiner_rss_idle_mb=idle,
        combiner_rss_connected_mb=connected,
        combiner_rss_peak_mb=peaks,
        reducer_rss_peak_mb=reducer_peak,
    )
