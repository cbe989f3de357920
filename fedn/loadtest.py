"""Load-test a real deployment: a reducer and combiners as processes, N emulated clients over real gRPC.

The emulated clients do what the client runtime does (ask the reducer for a combiner, open a task
stream, download the model, upload an update, and ask the reducer again when the stream ends) but
train by adding a constant, so the numbers are those of the framework: assignment, streaming,
validation, folding, merging and the stores. The clients share one process of their own
(``python -m fedn.loadtest``, see :func:`main`) and a few channels, which is how 10,000 fit on two
cores.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from fedn import heap, wire
from fedn.api_client import ReducerAPI
from fedn.auth.rpc import open_aio_channel
from fedn.auth.tokens import Role, TokenIssuer, load_private_key
from fedn.chunking import ChunkAssembler
from fedn.codec import decode_payload, encode_model
from fedn.errors import FednError, InvalidArgument, Unavailable
from fedn.launcher import FederationSpec, LocalFederation
from fedn.records import RoundStatus, SessionStatus
from fedn.sim.memory import cpu_s, peak_rss_mb, rss_mb
from fedn.tls import TLSFiles
from fedn.v1 import fedn_pb2 as pb
from fedn.v1 import fedn_pb2_grpc as pb_grpc
from fedn.wire import SHED_MESSAGE
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
    # how the emulated clients' task streams ended ("<call> <STATUS>: <details>" -> count), each followed by
    # asking the reducer again, and the reducer's refusals of those requests
    stream_endings: dict[str, int] = field(default_factory=dict)
    assign_failures: dict[str, int] = field(default_factory=dict)

    @property
    def client_errors(self) -> int:
        """Failed calls, other than idle task streams ended to rebalance the combiners (see :func:`is_client_error`)."""
        errors = sum(n for ending, n in self.stream_endings.items() if is_client_error(ending))
        return errors + sum(self.assign_failures.values())

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
            "rebalanced_streams": self.stream_endings.get(f"TaskStream UNAVAILABLE: {SHED_MESSAGE}", 0),
            "client_errors": self.client_errors,
            "client_error_kinds": {k: n for k, n in self.stream_endings.items() if is_client_error(k)}
            | self.assign_failures,
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


async def _emulated_client(stub: pb_grpc.CombinerStub, client_id: str, token: str = "") -> tuple[str, str]:
    """Serve one task stream until it ends; returns how it ended: the failed call and the status."""
    # each emulated client's own token on each call: they share channels, so it cannot be the channel's
    md = (("authorization", f"Bearer {token}"),) if token else None
    call = stub.TaskStream(pb.TaskStreamRequest(client_id=client_id, client_name=client_id), metadata=md)
    waiting: tuple[str, list[pb.UpdateChunk]] | None = None  # an update waiting for its upload grant
    what = "TaskStream"
    try:
        async for msg in call:
            task = wire.task_from_proto(msg)
            if task.kind == "upload_grant" and waiting is not None and waiting[0] == task.round_id:
                what = "UploadUpdate"
                await stub.UploadUpdate(iter(waiting[1]), metadata=md)
                waiting = None
            if task.kind == "evaluate":  # the figures of a client that evaluates instantly
                what = "evaluate"
                await _evaluate(stub, task, client_id, md)
                what = "TaskStream"
                continue
            if task.kind != "train":
                what = "TaskStream"
                continue
            what = "DownloadModel"
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
            what = "RequestUpload"
            grant = await stub.RequestUpload(
                pb.UploadRequest(round_id=task.round_id, client_id=client_id, payload_bytes=size), metadata=md
            )
            if grant.granted:  # as the client runtime does: upload now, or when the grant comes down the stream
                what = "UploadUpdate"
                await stub.UploadUpdate(iter(messages), metadata=md)
            else:
                waiting = (task.round_id, messages)
            what = "TaskStream"
        return what, "closed by the combiner"
    except grpc.aio.AioRpcError as exc:
        return what, f"{exc.code().name}: {exc.details()}"
    except FednError as exc:  # a task or a model this client refuses: counted, and it asks again
        return what, f"refused: {exc.message}"
    finally:
        call.cancel()


async def _evaluate(stub: pb_grpc.CombinerStub, task: wire.TaskInfo, client_id: str, md) -> None:
    """Download the model to evaluate (the cost a real client pays) and report a constant evaluation."""
    request = pb.DownloadModelRequest(model_id=task.model_id, client_id=client_id)
    async for _ in stub.DownloadModel(request, metadata=md):
        pass
    report = EvaluationReportInfo(task.round_id, client_id, task.model_id, 1.0, 10.0, {"accuracy": 0.5})
    await stub.ReportEvaluation(evaluation_report_to_proto(report), metadata=md)


def is_client_error(ending: str) -> bool:
    """Whether a way a task stream ended (``"<call> <STATUS>: <details>"``, as tallied by
    :class:`_Emulator`) is a client error: anything but the combiner sending an idle client on to
    another combiner (rebalancing), which a client answers by asking the reducer again."""
    return ending != f"TaskStream UNAVAILABLE: {SHED_MESSAGE}"


class _Emulator:
    """Emulated clients that behave as the client runtime does (:class:`client.runtime.ClientRuntime`):
    each asks the reducer for a combiner, serves its task stream, and when the stream ends asks the
    reducer again after a short random pause. They share a few channels per combiner."""

    def __init__(self, reducer_url: str, ca_file: str | None) -> None:
        self._reducer_url = reducer_url
        self._tls = TLSFiles(ca_file=ca_file)
        self._local = threading.local()  # each worker thread's reducer API and the token it sends now
        self._apis: list[ReducerAPI] = []
        self._apis_lock = threading.Lock()
        self._channels: dict[str, list[list]] = defaultdict(list)  # address -> [[channel, clients on it]]
        self.endings: Counter[str] = Counter()  # how task streams ended, "<call> <STATUS>: <details>"
        self.assign_failures: Counter[str] = Counter()

    def _assign(self, client_id: str, token: str) -> str:
        api = getattr(self._local, "api", None)
        if api is None:
            tls = self._tls if self._tls.ca_file else None
            api = ReducerAPI(self._reducer_url, timeout_s=30.0, token=lambda: self._local.token, tls=tls)
            self._local.api = api
            with self._apis_lock:
                self._apis.append(api)
        self._local.token = token
        return api.assign_client(client_id)["combiner_address"]

    def _channel(self, address: str) -> list:
        group = self._channels[address]
        slot = next((s for s in group if s[1] < CLIENTS_PER_CHANNEL), None)
        if slot is None:
            tls = self._tls if self._tls.ca_file else None
            slot = [open_aio_channel(address, tls=tls), 0]
            group.append(slot)
        slot[1] += 1
        return slot

    async def client(self, client_id: str, token: str) -> None:
        rng = random.Random(client_id)
        failures = 0
        while True:
            try:
                address = await asyncio.to_thread(self._assign, client_id, token)
            except FednError as exc:
                self.assign_failures[f"{type(exc).__name__}: {exc.message}"[:200]] += 1
                failures += 1
                await asyncio.sleep(rng.uniform(0, min(10.0, 0.5 * 2 ** min(failures, 10))))
                continue
            failures = 0
            slot = self._channel(address)
            try:
                what, how = await _emulated_client(pb_grpc.CombinerStub(slot[0]), client_id, token)
            finally:
                slot[1] -= 1
            self.endings[f"{what} {how}"[:200]] += 1
            await asyncio.sleep(rng.uniform(0, 0.5))  # as the runtime does before it asks again

    async def close(self) -> None:
        for group in self._channels.values():
            for channel, _ in group:
                await channel.close()
        for api in self._apis:
            api.close()

    def tally(self) -> dict:
        return {"stream_endings": dict(self.endings), "assign_failures": dict(self.assign_failures)}


async def _serve_clients(
    reducer_url: str, clients: list[tuple[str, str]], ca_file: str | None, tally_path: Path
) -> None:
    """Run every emulated client until SIGTERM or SIGINT, then write how their streams ended to ``tally_path``."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    emulator = _Emulator(reducer_url, ca_file)
    tasks = [asyncio.ensure_future(emulator.client(client_id, token)) for client_id, token in clients]
    try:
        await stop.wait()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await emulator.close()
        tally_path.write_text(json.dumps(emulator.tally()))


def main(argv: list[str] | None = None) -> None:
    """``python -m fedn.loadtest SPEC_JSON``: the emulated clients, in a process of their own.

    SPEC_JSON holds ``reducer_url``, ``ca_file`` (null: plaintext), ``clients`` (``[client_id, token]``
    pairs; an empty token without tokens) and ``tally`` (a path: on SIGTERM, how the clients' task
    streams ended is written there as JSON).

    Real clients run on machines of their own; here they share the cores with the servers, so what
    they cost is kept low: their allocator reuses freed buffers (:func:`fedn.heap.keep_freed_memory`)
    instead of faulting in fresh pages for every model, and none of it runs in the process that
    measures.
    """
    heap.keep_freed_memory()
    args = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(args[0]).read_text())
    clients = [(client_id, token) for client_id, token in spec["clients"]]
    asyncio.run(_serve_clients(spec["reducer_url"], clients, spec["ca_file"], Path(spec["tally"])))


def _tokens(fed: LocalFederation, clients: int) -> list[tuple[str, str]]:
    """Each emulated client's id and, when the federation is secure, a token of its own (a client is
    assigned, and served, only as its token's subject)."""
    issuer = TokenIssuer(load_private_key(fed.secrets.signing_key)) if fed.secrets else None
    ids = [f"load-{i}" for i in range(clients)]
    return [(i, issuer.issue(Role.CLIENT, i, 86400.0).token if issuer else "") for i in ids]


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
        spec_path, tally_path = fed.workdir / "emulated-clients.json", fed.workdir / "emulated-clients-tally.json"
        spec_path.touch(0o600)
        spec_path.write_text(
            json.dumps(
                {
                    "reducer_url": fed.reducer_url,
                    "ca_file": str(fed.secrets.ca_file) if fed.secrets else None,
                    "clients": _tokens(fed, clients),
                    "tally": str(tally_path),
                }
            )
        )
        emulated = fed.start_client_process("emulated-clients", ["-m", "fedn.loadtest", str(spec_path)])
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
            tally = json.loads(tally_path.read_text()) if tally_path.exists() else {}
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
        stream_endings=tally.get("stream_endings", {}),
        assign_failures=tally.get("assign_failures", {}),
    )


if __name__ == "__main__":
    main()
