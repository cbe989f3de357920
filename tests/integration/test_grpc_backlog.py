"""Thousands of clients connecting at once all get their task stream.

Calls that arrive faster than a gRPC server takes them wait in gRPC core's backlog, which by default
drops calls at random past 1000 waiting and all of them past 3000; the client sees CANCELLED. With
the core defaults, 5000 streams opened at once left about 2270 cancelled (10,000 emulated clients over
4 combiners: 1180). The combiner's server options size the backlog to the calls it accepts anyway.
"""

from __future__ import annotations

import asyncio
import collections

import grpc

from combiner.server import max_concurrent_rpcs, server_options
from combiner.settings import CombinerSettings
from fedn.v1 import fedn_pb2 as pb
from fedn.v1 import fedn_pb2_grpc as pb_grpc

STREAMS = 5000
PER_CHANNEL = 100


class _Streams(pb_grpc.CombinerServicer):
    async def TaskStream(self, request, context):
        yield pb.Task()
        await asyncio.Event().wait()  # held open, as a connected client's stream is


async def _open_all_at_once(settings: CombinerSettings) -> tuple[int, collections.Counter]:
    server = grpc.aio.server(options=server_options(settings), maximum_concurrent_rpcs=max_concurrent_rpcs(settings))
    pb_grpc.add_CombinerServicer_to_server(_Streams(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(STREAMS // PER_CHANNEL)]
    connected, failed = 0, collections.Counter()
    done = asyncio.Event()

    async def client(i: int) -> None:
        nonlocal connected
        call = pb_grpc.CombinerStub(channels[i % len(channels)]).TaskStream(pb.TaskStreamRequest(client_id=f"c{i}"))
        try:
            await call.read()
            connected += 1
        except grpc.aio.AioRpcError as exc:
            failed[exc.code().name] += 1
        if connected + sum(failed.values()) == STREAMS:
            done.set()
        await asyncio.Event().wait()

    tasks = [asyncio.create_task(client(i)) for i in range(STREAMS)]
    try:
        await asyncio.wait_for(done.wait(), timeout=120)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in channels:
            await c.close()
        await server.stop(0)
    return connected, failed


def test_a_burst_of_task_streams_all_connect():
    connected, failed = asyncio.run(_open_all_at_once(CombinerSettings()))
    assert (connected, dict(failed)) == (STREAMS, {})
