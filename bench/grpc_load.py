"""A real combiner process under N emulated clients over gRPC: seconds per round and combiner memory.

The bench plays the reducer (it calls RunRound) and N lightweight clients (one task stream each,
spread over a few channels) that download the model, perturb it, and upload it. Prints one JSON
line per client count: round wall time (excluding nothing: download, trivial train, upload, fold)
and the combiner's resident memory after the rounds and at its peak.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from fedn import wire
from fedn.chunking import iter_chunks
from fedn.codec import decode_payload, encode_payload, sha256_hex
from fedn.launcher import free_port
from fedn.models import save_model
from fedn.records import RoundPlan
from fedn.store import LocalModelStore
from fedn.v1 import fedn_pb2 as pb
from fedn.v1 import fedn_pb2_grpc as pb_grpc

CLIENTS_PER_CHANNEL = 100


def _rss_mb(pid: int) -> tuple[float, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


async def _client(stub, client_id: str, ready: asyncio.Event, connected: list) -> None:
    call = stub.TaskStream(pb.TaskStreamRequest(client_id=client_id, client_name=client_id))
    rng = np.random.default_rng(abs(hash(client_id)) % 2**32)
    try:
        async for msg in call:
            if not ready.is_set():
                connected.append(client_id)
                if len(connected) == ready.expected:
                    ready.set()
            task = wire.task_from_proto(msg)
            if task.kind != "train":
                continue
            chunks = [c async for c in stub.DownloadModel(pb.DownloadModelRequest(model_id=task.model_id))]
            header = wire.model_header_from_proto(chunks[0].header)
            arrays = decode_payload(header.tensors, b"".join(c.data for c in chunks[1:]))
            update = {k: v + rng.standard_normal(v.shape, dtype=np.float32) * 1e-3 for k, v in arrays.items()}
            manifest, payload = encode_payload(update)
            head = wire.UpdateHeaderInfo(
                task.round_id,
                client_id,
                task.model_id,
                10.0,
                {"train_loss": 1.0},
                wire.ModelHeaderInfo("", manifest, sha256_hex(payload), len(payload)),
            )

            async def messages(head=head, payload=payload):
                yield pb.UpdateChunk(header=wire.update_header_to_proto(head))
                for piece in iter_chunks(payload):
                    yield pb.UpdateChunk(data=piece)

            await stub.UploadUpdate(messages())
    except grpc.aio.AioRpcError:
        pass
    finally:
        call.cancel()


async def _run(port: int, model_id: str, clients: int, rounds: int) -> list[float]:
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(max(1, clients // CLIENTS_PER_CHANNEL))]
    stubs = [pb_grpc.CombinerStub(c) for c in channels]
    ready = asyncio.Event()
    ready.expected = clients
    connected: list[str] = []
    tasks = [asyncio.create_task(_client(stubs[i % len(stubs)], f"c{i}", ready, connected)) for i in range(clients)]
    await asyncio.wait_for(ready.wait(), 120)
    times = []
    control = pb_grpc.CombinerStub(channels[0])
    for r in range(rounds):
        plan = RoundPlan(
            round_id=f"bench-{clients}-{r}", session_id="bench", round_index=r + 1, model_id=model_id, timeout_s=300.0
        )
        start = time.perf_counter()
        result = await control.RunRound(wire.round_plan_to_proto(plan))
        times.append(time.perf_counter() - start)
        assert result.num_updates == clients, (result.num_updates, clients)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for c in channels:
        await c.close()
    return times


def run(params: int, client_counts: list[int], rounds: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedn-bench-") as tmp:
        models = LocalModelStore(Path(tmp) / "models")
        rng = np.random.default_rng(0)
        model_id = save_model(models, {"w": rng.standard_normal(params).astype(np.float32)}).id
        for clients in client_counts:
            port = free_port()
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "fedn",
                    "--log-level",
                    "WARNING",
                    "combiner",
                    "start",
                    "--name",
                    "bench",
                    "--port",
                    str(port),
                    "--models",
                    (Path(tmp) / "models").as_uri(),
                    "--reducer",
                    f"http://127.0.0.1:{free_port()}",
                    "--heartbeat-interval-s",
                    "5",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
            try:
                time.sleep(1.5)
                baseline, _ = _rss_mb(proc.pid)
                times = asyncio.run(_run(port, model_id, clients, rounds))
                rss, peak = _rss_mb(proc.pid)
            finally:
                proc.terminate()
                proc.wait(20)
            rows.append(
                {
                    "bench": "grpc_round",
                    "params": params,
                    "clients": clients,
                    "rounds": rounds,
                    "s_per_round_first": round(times[0], 3),
                    "s_per_round_steady": round(min(times[1:] or times), 3),
                    "combiner_rss_mb_idle": round(baseline, 1),
                    "combiner_rss_mb_after": round(rss, 1),
                    "combiner_rss_mb_peak": round(peak, 1),
                }
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=int, default=100_000)
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    for row in run(args.params, args.clients, args.rounds):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
