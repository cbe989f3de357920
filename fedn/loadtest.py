"""Load-test a real deployment: a reducer and combiners as processes, N emulated clients over real gRPC.

The emulated clients do what the client runtime does (ask the reducer for a combiner, open a task
stream, download the model, upload an update) but train by adding a constant, so the numbers are
those of the framework: assignment, streaming, validation, folding, merging and the stores. The
clients share one process of their own (``python -m fedn.loadtest``, see :func:`main`) and a few
channels, which is how 1000 fit on two cores.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from fedn import heap, wire
from fedn.api_client import ReducerAPI
from fedn.auth.rpc import open_aio_channel
from fedn.auth.tokens import Role, TokenIssuer, load_private_key
from fedn.chunking import ChunkAssembler
from fedn.codec import decode_payload, encode_model
from fedn.errors import InvalidArgument, Unavailable
from fedn.launcher import FederationSpec, LocalFederation
from fedn.records import RoundStatus, SessionStatus
from fedn.sim.memory import cpu_s, peak_rss_mb, rss_mb
from fedn.tls import TLSFiles
from fedn.v1 import fedn_pb2 as pb
from fedn.v1 import fedn_pb2_grpc as pb_grpc
from fedn.wire_eval import EvaluationReportInfo, evaluation_report_to_proto

__all__ = ["LoadResult", "run_load"]

CLIENTS_PER_CHANNEL = 100
# gRPC's default 4 MiB message cap does not apply: models travel in 1 MiB chunks


@dataclass
class LoadResult:
    tls: bool  # TLS and tokens on every connection (fedn local's default)
    clients: int
    combiners: int
    params: int
    round_s: list[float]
    combiner_rss_idle_mb: list[float]
    combiner_rss_connected_mb: list[float]
    combiner_rss_peak_mb: list[float]
    reducer_rss_peak_mb: float
    cpu_s: dict[str, float]  # CPU seconds per round during the session: combiners, reducer, emulated clients

    def row(self) -> dict:
        steady = self.round_s[1:] or self.round_s
        return {
            "bench": "grpc_load",
            "tls": self.tls,
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
            "cpu_s_per_round": {k: round(v, 3) for k, v in self.cpu_s.items()},
        }


def _train_and_encode(
    task: wire.TaskInfo, client_id: str, header: wire.ModelHeaderInfo, chunks: list[bytes]
) -> list[pb.UpdateChunk]:
    """What a client does between download and upload: verify, decode, train (add a constant), encode."""
    assembler = ChunkAssembler(header.payload_bytes, header.sha256)
    for chunk in chunks:
        assembler.add(chunk)
    chunks.clear()
    arrays = decode_payload(header.tensors, assembler.finish())
    update = {k: v + v.dtype.type(1e-3) for k, v in arrays.items()}  # the trivial train step
    del arrays, assembler
    return list(wire.update_messages(task.round_id, client_id, task.model_id, 10.0, {"train_loss": 1.0}, update))


async def _emulated_client(stub: pb_grpc.CombinerStub, client_id: str, token: str = "") -> None:
    # each emulated client's own token on each call: they share channels, so it cannot be the channel's
    md = (("authorization", f"Bearer {token}"),) if token else None
    call = stub.TaskStream(pb.TaskStreamRequest(client_id=client_id, client_name=client_id), metadata=md)
    waiting: tuple[str, list[pb.UpdateChunk]] | None = None  # an update waiting for its upload grant
    try:
        async for msg in call:
            task = wire.task_from_proto(msg)
            if task.kind == "upload_grant" and waiting is not None and waiting[0] == task.round_id:
                await stub.UploadUpdate(iter(waiting[1]), metadata=md)
                waiting = None
            if task.kind == "evaluate":  # the figures of a client that evaluates instantly
                await _evaluate(stub, task, client_id, md)
                continue
            if task.kind != "train":
                continue
            request = pb.DownloadModelRequest(model_id=task.model_id, client_id=client_id)
            stream = stub.DownloadModel(request, metadata=md)
            header, chunks = None, []
            async for msg in stream:
                if header is None:
                    header = wire.model_header_from_proto(msg.header)
                else:
                    chunks.append(msg.data)
            # Off the loop that carries every emulated client's streams: each real client has its own
            # machine for this, and hashing and numpy release the GIL.
            messages = await asyncio.to_thread(_train_and_encode, task, client_id, header, chunks)
            del chunks
            size = messages[0].header.model.payload_bytes
            grant = await stub.RequestUpload(
                pb.UploadRequest(round_id=task.round_id, client_id=client_id, payload_bytes=size), metadata=md
            )
            if grant.granted:  # as the client runtime does: upload now, or when the grant comes down the stream
                await stub.UploadUpdate(iter(messages), metadata=md)
            else:
                waiting = (task.round_id, messages)
    except grpc.aio.AioRpcError:
        pass
    finally:
        call.cancel()


async def _evaluate(stub: pb_grpc.CombinerStub, task: wire.TaskInfo, client_id: str, md) -> None:
    """Download the model to evaluate (the cost a real client pays) and report a constant evaluation."""
    request = pb.DownloadModelRequest(model_id=task.model_id, client_id=client_id)
    async for _ in stub.DownloadModel(request, metadata=md):
        pass
    report = EvaluationReportInfo(task.round_id, client_id, task.model_id, 1.0, 10.0, {"accuracy": 0.5})
    await stub.ReportEvaluation(evaluation_report_to_proto(report), metadata=md)


async def _serve_clients(assignments: list[tuple[str, str, str]], ca_file: str | None) -> None:
    """Run every emulated client, a few channels per combiner, until SIGTERM or SIGINT."""
    by_address: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for client_id, address, token in assignments:
        by_address[address].append((client_id, token))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    channels: list[grpc.aio.Channel] = []
    tasks: list[asyncio.Task] = []
    try:
        for address, ids in by_address.items():
            tls = TLSFiles(ca_file=ca_file)
            group = [open_aio_channel(address, tls=tls) for _ in range(max(1, len(ids) // CLIENTS_PER_CHANNEL))]
            channels.extend(group)
            for i, (client_id, token) in enumerate(ids):
                stub = pb_grpc.CombinerStub(group[i % len(group)])
                tasks.append(asyncio.ensure_future(_emulated_client(stub, client_id, token)))
        await stop.wait()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in channels:
            await c.close()


def main(argv: list[str] | None = None) -> None:
    """``python -m fedn.loadtest ASSIGNMENTS_JSON [CA_FILE]``: the emulated clients, in a process of their own.

    ASSIGNMENTS_JSON lists ``[client_id, combiner_address, token]``; with CA_FILE the combiners are
    dialled over TLS.

    Real clients run on machines of their own; here they share the cores with the servers, so what
    they cost is kept low: their allocator reuses freed buffers (:func:`fedn.heap.keep_freed_memory`)
    instead of faulting in fresh pages for every model, and none of it runs in the process that
    measures.
    """
    heap.keep_freed_memory()
    args = sys.argv[1:] if argv is None else argv
    path, ca_file = args[0], (args[1] if len(args) > 1 else None)
    assignments = [(client_id, address, token) for client_id, address, token in json.loads(Path(path).read_text())]
    asyncio.run(_serve_clients(assignments, ca_file))


def _assign(fed: LocalFederation, clients: int) -> list[tuple[str, str, str]]:
    """Ask the reducer for a combiner for each emulated client, each with a token of its own when the
    federation is secure (a client is assigned, and served, only as its token's subject)."""
    issuer = TokenIssuer(load_private_key(fed.secrets.signing_key)) if fed.secrets else None
    current = [""]
    api = ReducerAPI(fed.reducer_url, timeout_s=30.0, token=(lambda: current[0]) if issuer else None, tls=fed.api_tls())
    assignments = []
    with api:
        for i in range(clients):
            client_id = f"load-{i}"
            current[0] = issuer.issue(Role.CLIENT, client_id, 86400.0).token if issuer else ""
            a = api.assign_client(client_id)
            assignments.append((a["client_id"], a["combiner_address"], current[0]))
    return assignments


def run_load(
    clients: int,
    combiners: int = 2,
    params: int = 100_000,
    rounds: int = 3,
    round_timeout_s: float = 300.0,
    on_event: Callable[[str], None] | None = None,
    secure: bool = True,
    evaluate_every: int = 0,
) -> LoadResult:
    """Start a reducer and ``combiners`` combiners, connect ``clients`` emulated clients, run ``rounds`` rounds.

    ``evaluate_every`` 0 (the default) measures training rounds alone, as the figures of earlier releases
    did; the emulated clients answer evaluation tasks too, so a positive value measures both."""
    if clients < 1 or combiners < 1 or params < 1 or rounds < 1:
        raise InvalidArgument("clients, combiners, params and rounds must be at least 1")
    say = on_event or (lambda message: None)
    spec = FederationSpec(client="", num_combiners=combiners, num_clients=0, log_level="WARNING", secure=secure)
    with LocalFederation(spec, on_event=say) as fed:
        combiner_pids = [p.pid for p in fed.combiners]
        idle = [rss_mb(pid) for pid in combiner_pids]
        peaks = list(idle)
        reducer_peak = rss_mb(fed.reducer.pid) if fed.reducer and fed.reducer.pid else 0.0
        with fed.api() as api:
            seed = api.upload_model(encode_model({"w": np.zeros(params, dtype=np.float32)}))
        assignments = _assign(fed, clients)
        assignments_path = fed.workdir / "emulated-clients.json"
        assignments_path.touch(0o600)
        assignments_path.write_text(json.dumps(assignments))
        ca = [str(fed.secrets.ca_file)] if fed.secrets else []
        emulated = fed.start_client_process("emulated-clients", ["-m", "fedn.loadtest", str(assignments_path), *ca])
        try:
            try:
                fed.wait_for_clients(clients, timeout_s=max(60.0, clients * 0.2))
            except Unavailable as exc:
                raise Unavailable(f"{exc.message}; the emulated clients' log:\n{emulated.log_tail()}") from None
            time.sleep(1.0)  # let the last streams settle
            connected = [rss_mb(pid) for pid in combiner_pids]
            groups = {"combiners": combiner_pids, "reducer": [fed.reducer.pid], "clients": [emulated.pid]}
            cpu_before = {name: sum(cpu_s(p) for p in pids if p) for name, pids in groups.items()}
            with fed.api() as api:
                session = api.start_session(
                    rounds=rounds,
                    round_timeout_s=round_timeout_s,
                    min_clients=clients,
                    model_id=seed.id,
                    evaluate_every=evaluate_every,
                )
                say(f"session {session.id}: {rounds} rounds with {clients} clients")
                deadline = time.monotonic() + rounds * (round_timeout_s + 30)
                while time.monotonic() < deadline:
                    peaks = [max(p, rss_mb(pid)) for p, pid in zip(peaks, combiner_pids, strict=True)]
                    if fed.reducer and fed.reducer.pid:
                        reducer_peak = max(reducer_peak, rss_mb(fed.reducer.pid))
                    session = api.get_session(session.id)
                    if session.status in (SessionStatus.DONE, SessionStatus.FAILED, SessionStatus.STOPPED):
                        break
                    time.sleep(0.05)
                cpu_used = {name: sum(cpu_s(p) for p in pids if p) - cpu_before[name] for name, pids in groups.items()}
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
        tls=secure,
        clients=clients,
        combiners=combiners,
        params=params,
        round_s=[r.duration_s or 0.0 for r in done],
        combiner_rss_idle_mb=idle,
        combiner_rss_connected_mb=connected,
        combiner_rss_peak_mb=peaks,
        reducer_rss_peak_mb=reducer_peak,
        cpu_s={name: used / rounds for name, used in cpu_used.items()},
    )


if __name__ == "__main__":
    main()
