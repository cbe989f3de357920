"""The combiner's part of a round: which clients are connected, what they were asked, what they sent.

Pure asyncio and domain objects; the gRPC servicer only translates to and from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import itertools
import logging
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from combiner.buffered import FOLD_IN_THREAD_BYTES, BufferedRun
from combiner.grants import GrantGate
from fedn import heap
from fedn.aggregation import MetricsAccumulator, WeightedMean, aggregator_config, make_aggregator
from fedn.chunking import DEFAULT_CHUNK_BYTES, ChunkAssembler, ChunkSpool, iter_chunks
from fedn.codec import (
    NamedArrays,
    SpooledTensor,
    TensorSpec,
    check_finite,
    check_manifest,
    decode_payload,
    encode_model_chunks,
    model_header_size,
    payload_bytes,
    read_model_header,
    split_model,
    spooled_arrays,
)
from fedn.errors import Conflict, FailedPrecondition, InvalidArgument, InvalidModel, PayloadTooLarge
from fedn.models import model_key, partial_key
from fedn.records import ClientFailureRecord, RoundPlan, RoundResult, SessionMode
from fedn.sampling import select_clients
from fedn.store.base import ModelStore
from fedn.wire import (
    Announcement,
    ModelHeaderInfo,
    TaskInfo,
    UpdateHeaderInfo,
    model_data_message,
    model_header_message,
)

__all__ = ["HEARTBEAT", "CachedModel", "ClientConnection", "RoundService", "download_concurrency"]

logger = logging.getLogger(__name__)

_MODEL_CACHE_SIZE = 3
_STREAM_BUFFER_BYTES = 8 << 20  # what one download stream may hold: its read-ahead and gRPC's send queue
# Train tasks out per free download stream: the next client is already asking when a stream frees,
# which hides a round trip, while the calls that wait stay few (each costs ~20 KiB of gRPC state).
_TASKS_PER_DOWNLOAD_STREAM = 2

_SPOOL_WRITE_BYTES = 1 << 20  # chunks of a spooled upload written per thread hop
_READ_AHEAD_BYTES = 1 << 20  # chunks of a stored model read per thread hop, per download

HEARTBEAT = TaskInfo("heartbeat")


async def _check_finite_values(arrays: Mapping[str, np.ndarray | SpooledTensor], *, big: bool) -> None:
    """Every update is checked here, whatever its aggregator checks (a plug-in may check nothing)."""

    def check() -> None:
        for name, array in arrays.items():
            check_finite(name, array)

    await asyncio.to_thread(check) if big else check()


def download_concurrency(model_bytes: int, max_downloads: int, max_download_bytes: int) -> int:
    """Downloads of one model streamed at once: each holds up to min(model, ``_STREAM_BUFFER_BYTES``)."""
    per_stream = max(1, min(model_bytes, _STREAM_BUFFER_BYTES))
    return max(1, min(max_downloads, max_download_bytes // per_stream))


@dataclass(frozen=True)
class CachedModel:
    """A global model as downloads send it: its header message, and its data messages when it is small
    enough to hold (``model_cache_bytes``). Those are serialized once and every client gets the same
    bytes, with no copy per download. A larger model is streamed from the model store to each client,
    so the combiner never holds a copy of it."""

    model_id: str
    manifest: list[TensorSpec]
    sha256: str
    size: int
    header: bytes  # the serialized first message of a download
    messages: tuple[bytes, ...] | None  # the serialized data messages, if held
    key: str = ""
    offset: int = 0  # where the payload starts in the stored blob


@dataclass(eq=False)
class ClientConnection:
    """One open task stream; the stream handler is the only writer, fed through ``tasks``."""

    client_id: str
    name: str
    tasks: asyncio.Queue = field(default_factory=asyncio.Queue)


@dataclass(eq=False)
class _ActiveRound:
    plan: RoundPlan
    manifest: list[TensorSpec]
    aggregator: WeightedMean
    selected: set[str]
    started_at: float
    metrics: MetricsAccumulator = field(default_factory=MetricsAccumulator)
    answered: set[str] = field(default_factory=set)
    accepted: list[str] = field(default_factory=list)
    downloaded: set[str] = field(default_factory=set)
    uploading: set[str] = field(default_factory=set)
    failures: dict[str, str] = field(default_factory=dict)
    num_rejected: int = 0
    closed: bool = False
    task: asyncio.Task | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    gate: GrantGate | None = None  # upload slots
    tasks: GrantGate | None = None  # train tasks out, paced by downloads
    all_answered: asyncio.Event = field(default_factory=asyncio.Event)

    @functools.cached_property
    def train_task(self) -> TaskInfo:
        plan = self.plan
        return TaskInfo(
            "train", plan.round_id, plan.session_id, plan.model_id, plan.round_index, plan.timeout_s, plan.config
        )

    def answer(self, client_id: str, error: str | None = None) -> None:
        self.answered.add(client_id)
        if self.tasks is not None:
            self.tasks.release(client_id)
        if self.gate is not None and client_id not in self.uploading:
            self.gate.release(client_id)  # an uploading client's slot is freed when its staged buffer is
        if error is not None:
            self.failures[client_id] = error
        if self.answered >= self.selected:
            self.all_answered.set()


class RoundService:
    """Connected clients, the global-model cache and the one active round of this combiner."""

    def __init__(
        self,
        combiner_id: str,
        models: ModelStore,
        *,
        max_update_bytes: int = 1 << 30,
        max_concurrent_uploads: int = 8,
        max_concurrent_downloads: int = 16,
        max_download_bytes: int = 16 << 20,
        max_staged_bytes: int = 64 << 20,
        grant_timeout_s: float = 30.0,
        model_cache_bytes: int = 16 << 20,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        spool_over_bytes: int = 16 << 20,
        spool_dir: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.combiner_id = combiner_id
        self._models = models
        self._max_update_bytes = max_update_bytes
        self._max_uploads = max_concurrent_uploads
        self._max_staged_bytes = max_staged_bytes
        self._grant_timeout_s = grant_timeout_s
        self._model_cache_bytes = model_cache_bytes
        self._chunk_bytes = chunk_bytes
        self._spool_over_bytes = spool_over_bytes
        self._spool_dir = spool_dir
        self._max_downloads = max_concurrent_downloads
        self._max_download_bytes = max_download_bytes
        self._download_slots: dict[str, asyncio.Semaphore] = {}
        self.clock = clock
        self._clients: dict[str, ClientConnection] = {}
        self._cache: OrderedDict[str, CachedModel] = OrderedDict()
        self._cache_lock = asyncio.Lock()
        self._round: _ActiveRound | None = None
        self._buffered: BufferedRun | None = None  # an asynchronous session, if one runs here
        self._closed_rounds: deque[str] = deque(maxlen=64)

    @property
    def models(self) -> ModelStore:
        return self._models

    # -- clients -----------------------------------------------------------

    def connect(self, client_id: str, name: str) -> ClientConnection:
        if not client_id:
            raise InvalidArgument("client_id is required")
        previous = self._clients.get(client_id)
        conn = ClientConnection(client_id, name or client_id)
        self._clients[client_id] = conn
        logger.info(
            "client %s (%s) connected%s; %d connected",
            client_id,
            conn.name,
            " again, replacing its old stream" if previous else "",
            len(self._clients),
        )
        run = self._buffered
        if run is not None and not run.closed:
            if previous is not None:
                run.left(client_id)  # its task went down the old stream
            run.dispatch(client_id)
        return conn

    def disconnect(self, conn: ClientConnection) -> None:
        if self._clients.get(conn.client_id) is not conn:
            return  # replaced by a newer stream of the same client
        del self._clients[conn.client_id]
        logger.info("client %s disconnected; %d connected", conn.client_id, len(self._clients))
        rnd = self._round
        if rnd and not rnd.closed and conn.client_id in rnd.selected and conn.client_id not in rnd.answered:
            rnd.answer(conn.client_id, "client disconnected")
        if self._buffered is not None:
            self._buffered.left(conn.client_id)

    async def send_heartbeats(self, interval_s: float) -> None:
        """Every ``interval_s``, a heartbeat to each stream with nothing queued, so clients can tell a
        quiet combiner from a dead one. One loop for all streams: a timer per stream costs memory and
        CPU per client."""
        while True:
            await asyncio.sleep(interval_s)
            for conn in list(self._clients.values()):
                if conn.tasks.empty():
                    conn.tasks.put_nowait(HEARTBEAT)

    def connected_client_ids(self) -> list[str]:
        return sorted(self._clients)

    def connection(self, client_id: str) -> ClientConnection | None:
        return self._clients.get(client_id)

    # -- models ------------------------------------------------------------

    async def get_model(self, model_id: str) -> CachedModel:
        async with self._cache_lock:
            cached = self._cache.get(model_id)
            if cached is None:
                cached = await asyncio.to_thread(self._load_model, model_id)
                self._cache[model_id] = cached
                while len(self._cache) > _MODEL_CACHE_SIZE:
                    self._cache.popitem(last=False)
            self._cache.move_to_end(model_id)
            return cached

    def _load_model(self, model_id: str) -> CachedModel:
        """One pass over the stored blob: its header, then the payload kept (small) or only hashed (large)."""
        key = model_key(model_id)
        chunks = self._models.iter_chunks(key, 1 << 20)
        head = bytearray()
        for chunk in chunks:
            head += chunk
            if len(head) >= 8 and len(head) >= model_header_size(head):
                break
        offset = model_header_size(head)
        manifest, size = read_model_header(head)
        keep = size <= self._model_cache_bytes
        digest = hashlib.sha256()
        payload = bytearray(head[offset:]) if keep else None
        digest.update(memoryview(head)[offset:])
        received = len(head) - offset
        for chunk in chunks:
            digest.update(chunk)
            received += len(chunk)
            if payload is not None:
                payload += chunk
        if received != size:
            raise InvalidModel(f"model {model_id} has {received} data bytes, its header describes {size}")
        logger.info(
            "loaded global model %s (%d tensors, %d bytes, %s)",
            model_id,
            len(manifest),
            size,
            "held in memory" if keep else "streamed from the store",
        )
        sha256 = digest.hexdigest()
        header = model_header_message(ModelHeaderInfo(model_id, manifest, sha256, size))
        messages = None if payload is None else tuple(map(model_data_message, iter_chunks(payload, self._chunk_bytes)))
        return CachedModel(model_id, manifest, sha256, size, header, messages, key, offset)

    async def download_messages(self, model: CachedModel) -> AsyncIterator[bytes]:
        """A download's serialized messages: the header, then the data, held or read from the store off
        the event loop (and serialized there)."""
        yield model.header
        if model.messages is not None:
            for message in model.messages:
                yield message
            return
        pieces = map(model_data_message, self._stored_payload(model, self._chunk_bytes))
        per_hop = max(1, _READ_AHEAD_BYTES // self._chunk_bytes)

        def read() -> asyncio.Future:
            return asyncio.ensure_future(asyncio.to_thread(list, itertools.islice(pieces, per_hop)))

        # The next batch is read while this one is sent: a stream does not wait on a thread handoff
        # per batch, and holds at most two batches.
        reading = read()
        try:
            while batch := await reading:
                reading = read()
                for message in batch:
                    yield message
                del batch
        finally:  # the client may have gone mid-download: let a read in flight finish, and drop it
            with contextlib.suppress(Exception):
                await reading

    def _stored_payload(self, model: CachedModel, chunk_bytes: int) -> Iterator[bytes]:
        skip, pending, sent = model.offset, bytearray(), 0
        for piece in self._models.iter_chunks(model.key, chunk_bytes):
            view = memoryview(piece)
            if skip:
                taken = min(skip, len(view))
                view, skip = view[taken:], skip - taken
            pending += view
            while len(pending) >= chunk_bytes:
                sent += chunk_bytes
                yield bytes(pending[:chunk_bytes])
                del pending[:chunk_bytes]
        if pending:
            sent += len(pending)
            yield bytes(pending)
        if sent != model.size:  # the blob changed under us: the client's digest check will refuse it too
            raise InvalidModel(f"model {model.model_id} changed in the store while it was served")

    async def model_arrays(self, model_id: str) -> NamedArrays:
        """The model as arrays, read from the store (a held model is kept only as download messages)."""
        model = await self.get_model(model_id)
        manifest, payload = split_model(await asyncio.to_thread(self._models.get, model.key))
        return decode_payload(manifest, payload)

    def download_slots(self, model: CachedModel) -> asyncio.Semaphore:
        """How many clients may download ``model`` at once: ``max_concurrent_downloads``, fewer for a large
        model, since each stream in flight holds up to ``_STREAM_BUFFER_BYTES`` of it in our and gRPC's
        buffers, and all of them together stay within ``max_download_bytes``."""
        slots = self._download_slots.get(model.model_id)
        if slots is None:
            count = download_concurrency(model.size, self._max_downloads, self._max_download_bytes)
            while len(self._download_slots) >= 8:  # old models' semaphores; a waiter keeps its own reference
                self._download_slots.pop(next(iter(self._download_slots)))
            slots = self._download_slots[model.model_id] = asyncio.Semaphore(count)
        return slots

    def cached_model_ids(self) -> list[str]:
        return list(self._cache)

    def download_done(self, model_id: str, client_id: str) -> None:
        """A client has the whole model. Once every client of the round has it, the cached copy is
        dropped: the round's memory is then the running sum and the staged updates, not the model too.
        A late download reads it from the store again. Either way the client's task grant is done."""
        run = self._buffered
        if run is not None and not run.closed:
            run.downloaded(client_id)
        rnd = self._round
        if rnd is None or rnd.closed or rnd.plan.model_id != model_id or client_id not in rnd.selected:
            return
        rnd.downloaded.add(client_id)
        if rnd.tasks is not None:
            rnd.tasks.release(client_id)  # its download is done: the next client gets its task
        async_run = self._buffered is not None and not self._buffered.closed  # it serves base models all along
        if rnd.downloaded >= rnd.selected and not async_run and self._cache.pop(model_id, None) is not None:
            logger.debug("round %s: every client has model %s; dropped it from the cache", rnd.plan.round_id, model_id)

    # -- rounds ------------------------------------------------------------

    async def run_round(self, plan: RoundPlan) -> RoundResult:
        """Run ``plan`` on this combiner's clients; returns when all answered or the deadline passed.

        The round runs as its own task, not tied to the caller: if the reducer dies mid-round and,
        restarted, asks for the same round again, the call joins the round (or gets its result if it
        already ended). A different round id means the reducer moved on: the old round is abandoned.
        """
        if plan.mode == SessionMode.ASYNC:
            return await self._run_buffered(plan)
        self._end_buffered(f"a synchronous round ({plan.round_id}) started")
        current = self._round
        if current is not None and current.task is not None:
            if current.plan.round_id == plan.round_id:
                logger.info("round %s asked for again (reducer restarted?): joining it", plan.round_id)
                return await asyncio.shield(current.task)
            if self._abandon_round(f"the reducer asked for round {plan.round_id}"):
                with contextlib.suppress(Exception):
                    await asyncio.shield(current.task)
        if plan.timeout_s <= 0:
            raise InvalidArgument("round timeout must be positive")
        aggregator_config(plan.aggregator, plan.aggregator_config)  # refuse a bad rule before clients train
        model = await self.get_model(plan.model_id)
        selected = select_clients(self.connected_client_ids(), plan.max_clients, plan.sample_seed)
        aggregator = make_aggregator(plan.aggregator, model.manifest, plan.aggregator_config)
        rnd = _ActiveRound(plan, model.manifest, aggregator, set(selected), self.clock())
        rnd.gate = self.upload_gate(model.manifest, plan.round_id, plan.session_id)
        rnd.tasks = self.task_gate(model, lambda client_id: self._send(client_id, rnd.train_task))
        self._round = rnd
        rnd.task = asyncio.create_task(self._drive(rnd), name=f"round-{plan.round_id}")
        return await asyncio.shield(rnd.task)

    def upload_gate(self, manifest: list[TensorSpec], round_id: str, session_id: str) -> GrantGate:
        """Staged updates are bounded in count and in bytes, but one may always be staged."""
        slots = min(self._max_uploads, self._max_staged_bytes // max(1, payload_bytes(manifest)))

        grant = TaskInfo("upload_grant", round_id, session_id)
        return GrantGate(slots, lambda c: self._send(c, grant), grant_timeout_s=self._grant_timeout_s, clock=self.clock)

    def task_gate(self, model: CachedModel, send: Callable[[str], None]) -> GrantGate:
        """Train tasks are handed out as download grants: a few per download stream of ``model``, the next
        as a client's download completes (or its grant lapses), so clients that wait cost no open call."""
        streams = download_concurrency(model.size, self._max_downloads, self._max_download_bytes)
        return GrantGate(
            streams * _TASKS_PER_DOWNLOAD_STREAM, send, grant_timeout_s=self._grant_timeout_s, clock=self.clock
        )

    def _send(self, client_id: str, task: TaskInfo) -> None:
        conn = self._clients.get(client_id)
        if conn is not None:
            conn.tasks.put_nowait(task)

    async def _run_buffered(self, plan: RoundPlan) -> RoundResult:
        """Join (or start) the async session of ``plan``; returns the next buffer of updates as a partial."""
        if plan.timeout_s <= 0:
            raise InvalidArgument("round timeout must be positive")
        if plan.buffer_size < 1:
            raise InvalidArgument(f"async buffer_size must be at least 1, got {plan.buffer_size}")
        if plan.aggregator != "fedavg":
            raise InvalidArgument(
                f"async sessions fold deltas with fedavg; aggregator {plan.aggregator!r} needs mode sync"
            )
        run = self._buffered
        if run is None or run.closed or run.session_id != plan.session_id:
            model = await self.get_model(plan.model_id)
            self._end_buffered(f"session {plan.session_id} started")
            self._abandon_round(f"async session {plan.session_id} started")
            run = BufferedRun(self, plan, model.manifest, lease_s=max(60.0, 3 * plan.timeout_s))
            run.gate = self.upload_gate(model.manifest, run.run_id, plan.session_id)
            run.tasks = self.task_gate(model, run.send_task)
            self._buffered = run
            logger.info(
                "async session %s started on %s: buffer %d, %d clients",
                plan.session_id,
                self.combiner_id,
                plan.buffer_size,
                len(self._clients),
            )
            run.start(self.connected_client_ids())
        else:
            await self.get_model(plan.model_id)  # refuse an unknown model before clients are sent to it
            run.update_plan(plan)
        return await run.flush(plan)

    def announce(self, info: Announcement) -> bool:
        """The reducer's word that an async session's model moved on; False if that session does not run here."""
        run = self._buffered
        if run is None or run.closed or run.session_id != info.session_id:
            return False
        if info.final:
            self._end_buffered(f"the session ended at version {info.model_version}")
        else:
            run.advance(info.model_id, info.model_version)
        return True

    def _end_buffered(self, reason: str) -> None:
        """End the async run, if one is on. It stays, closed, to tell late uploads the session ended."""
        run = self._buffered
        if run is not None and not run.closed:
            run.end(reason)
            self._closed_rounds.append(run.run_id)

    def _abandon_round(self, reason: str) -> bool:
        """Stop the sync round still running, if any; True if there was one."""
        current = self._round
        if current is None or current.task is None or current.task.done():
            return False
        logger.warning("round %s abandoned: %s", current.plan.round_id, reason)
        current.all_answered.set()
        return True

    async def _drive(self, rnd: _ActiveRound) -> RoundResult:
        plan, selected = rnd.plan, sorted(rnd.selected)
        logger.info(
            "round %s (session %s, #%d) started on %s with %d clients, timeout %.1fs",
            plan.round_id,
            plan.session_id,
            plan.round_index,
            self.combiner_id,
            len(selected),
            plan.timeout_s,
        )
        try:
            if selected:
                for client_id in selected:
                    if rnd.tasks.request(client_id):
                        self._send(client_id, rnd.train_task)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(rnd.all_answered.wait(), timeout=plan.timeout_s)
            async with rnd.lock:
                rnd.closed = True
        finally:
            rnd.closed = True
            rnd.gate.close()
            rnd.tasks.close()
            self._closed_rounds.append(plan.round_id)
        for client_id in sorted(rnd.selected - rnd.answered):
            rnd.failures[client_id] = f"no update within the round deadline ({plan.timeout_s:g}s)"
        key = ""
        total_weight = 0.0
        if rnd.aggregator.count:
            # the round is over: a mean computed in place of the running sums saves a model copy
            partial = getattr(rnd.aggregator, "finish", rnd.aggregator.partial)()
            key = partial_key(plan.round_id, self.combiner_id)
            await asyncio.to_thread(self._models.put, key, encode_model_chunks(partial.arrays))
            total_weight = partial.total_weight
            del partial
        await asyncio.to_thread(heap.trim)  # the round's buffers are gone: return their memory to the OS
        result = RoundResult(
            round_id=plan.round_id,
            combiner_id=self.combiner_id,
            partial_key=key,
            total_weight=total_weight,
            num_selected=len(rnd.selected),
            num_updates=rnd.aggregator.count,
            num_rejected=rnd.num_rejected,
            failures=[
                ClientFailureRecord(client_id=c, combiner_id=self.combiner_id, error=e)
                for c, e in sorted(rnd.failures.items())
            ],
            metrics=rnd.metrics.summary(),
            client_ids=list(rnd.accepted),
        )
        logger.info(
            "round %s ended on %s: %d/%d updates, %d rejected, %d failed, %.2fs",
            plan.round_id,
            self.combiner_id,
            result.num_updates,
            result.num_selected,
            result.num_rejected,
            len(result.failures),
            self.clock() - rnd.started_at,
        )
        return result

    def _open_round_for(self, round_id: str, client_id: str) -> _ActiveRound:
        rnd = self._round
        if rnd is None or rnd.plan.round_id != round_id:
            state = "closed" if round_id in self._closed_rounds else "unknown"
            raise FailedPrecondition(f"round {round_id!r} is {state} on combiner {self.combiner_id}")
        if rnd.closed:
            raise FailedPrecondition(f"round {round_id!r} is closed on combiner {self.combiner_id}")
        if client_id not in rnd.selected:
            raise FailedPrecondition(f"client {client_id!r} was not asked to train in round {round_id!r}")
        if client_id in rnd.answered or client_id in rnd.uploading:
            raise Conflict(f"client {client_id!r} already sent its answer for round {round_id!r}")
        return rnd

    def request_upload(self, round_id: str, client_id: str, size: int) -> tuple[bool, int]:
        """May ``client_id`` upload its update of ``round_id`` now? (granted, clients queued before it)"""
        if size > self._max_update_bytes:
            raise PayloadTooLarge(f"update of {size} bytes exceeds the combiner's limit of {self._max_update_bytes}")
        run = self._buffered
        if run is not None and round_id == run.run_id:
            run.expect(client_id)
            gate = run.gate
        else:
            gate = self._open_round_for(round_id, client_id).gate
        queued = gate.waiting
        return gate.request(client_id), queued

    def report_failure(self, round_id: str, client_id: str, error: str) -> None:
        run = self._buffered
        if run is not None and round_id == run.run_id:
            run.report_failure(client_id, error)
            return
        rnd = self._open_round_for(round_id, client_id)
        text = (error or "unspecified error")[:2000]
        logger.warning("client %s failed round %s: %s", client_id, round_id, text)
        rnd.answer(client_id, text)

    async def receive_update(self, header: UpdateHeaderInfo, chunks: AsyncIterator[bytes]) -> int:
        """Validate one streamed update completely, then fold it; returns the round's accepted count.

        The update is staged in its own buffer (at most ``max_concurrent_uploads`` at once, and no
        more than ``max_staged_bytes`` of them unless one alone is larger), so a rejected update
        never touches the running aggregate.
        """
        client_id, round_id = header.client_id, header.round_id
        run = self._buffered
        if run is not None and round_id == run.run_id:
            return await run.receive(header, chunks)
        rnd = self._open_round_for(round_id, client_id)
        rnd.uploading.add(client_id)
        big = header.model.payload_bytes > FOLD_IN_THREAD_BYTES
        try:
            self.check_header(rnd.manifest, header)
            async with rnd.gate.slot(client_id):  # held until the fold, so staged buffers stay within the bound
                spool = getattr(rnd.aggregator, "reads_spooled", False)
                async with self.staged_update(rnd.manifest, header, chunks, spool=spool) as arrays, rnd.lock:
                    if rnd.closed:
                        raise FailedPrecondition(f"round {round_id!r} closed while the update was uploading")
                    if big:
                        await asyncio.to_thread(rnd.aggregator.add, arrays, header.num_examples)
                    else:
                        rnd.aggregator.add(arrays, header.num_examples)
                    rnd.metrics.add(header.metrics, header.num_examples)
                    rnd.accepted.append(client_id)
                    rnd.answer(client_id)
                    count = rnd.aggregator.count
                del arrays
            if big:  # the staged buffer is gone: give its memory back before the next one arrives
                await asyncio.to_thread(heap.trim)
        except (InvalidArgument, PayloadTooLarge) as exc:  # the update's own fault: final for this round
            if not rnd.closed:
                rnd.num_rejected += 1
                rnd.answer(client_id, f"update rejected: {exc.message}")
            logger.warning("rejected update from client %s in round %s: %s", client_id, round_id, exc.message)
            raise
        finally:
            rnd.uploading.discard(client_id)
        logger.debug("folded update from client %s into round %s (%d so far)", client_id, round_id, count)
        return count

    def check_header(self, manifest: list[TensorSpec], header: UpdateHeaderInfo) -> None:
        """Refuse an update from its header alone, before it takes a staging slot."""
        weight = header.num_examples
        if not (weight > 0 and weight != float("inf")):
            raise InvalidArgument(f"num_examples must be a positive finite number, got {weight}")
        size = header.model.payload_bytes
        if size > self._max_update_bytes:
            raise PayloadTooLarge(f"update of {size} bytes exceeds the combiner's limit of {self._max_update_bytes}")
        check_manifest(manifest, header.model.tensors)
        if size != payload_bytes(manifest):
            raise InvalidModel(f"header announces {size} bytes, the model has {payload_bytes(manifest)}")

    @contextlib.asynccontextmanager
    async def staged_update(
        self, manifest: list[TensorSpec], header: UpdateHeaderInfo, chunks: AsyncIterator[bytes], *, spool: bool = True
    ) -> AsyncIterator[Mapping[str, np.ndarray | SpooledTensor]]:
        """Receive an update whole and check it (size, sha256, finite values), then lend its tensors.

        One up to ``spool_over_bytes``, or any when ``spool`` is false (an aggregator that needs numpy
        arrays), is staged in memory. A larger one goes to a temporary file in ``spool_dir`` and is
        read back a slice at a time by the checks and the fold, so staging it costs disk, not a copy
        of the model in memory; the file is gone when the block ends.
        """
        size, sha = header.model.payload_bytes, header.model.sha256
        if size <= self._spool_over_bytes or not spool:
            assembler = ChunkAssembler(size, sha, self._max_update_bytes)
            async for chunk in chunks:
                assembler.add(chunk)
            arrays = decode_payload(manifest, assembler.finish())
            await _check_finite_values(arrays, big=size > FOLD_IN_THREAD_BYTES)
            yield arrays
            return
        spooler = ChunkSpool(size, sha, self._max_update_bytes, self._spool_dir)
        writing: asyncio.Future | None = None
        try:
            # Written and hashed off the event loop, a batch at a time, while the next batch arrives: one
            # write in flight keeps the order, and waiting for each hop would slow the upload to the
            # pace of thread handoffs.
            batch: list[bytes] = []
            batch_bytes = 0
            async for chunk in chunks:
                batch.append(chunk)
                batch_bytes += len(chunk)
                if batch_bytes >= _SPOOL_WRITE_BYTES:
                    if writing is not None:
                        await writing
                    writing = asyncio.ensure_future(asyncio.to_thread(spooler.add_all, batch))
                    batch, batch_bytes = [], 0
            if writing is not None:
                await writing
            spooler.add_all(batch)  # less than one batch
            del batch
            spooled = spooled_arrays(manifest, spooler.finish())
            await _check_finite_values(spooled, big=True)
            yield spooled
        finally:
            if writing is not None:  # the upload may have failed mid-way: let a write in flight end first
                with contextlib.suppress(Exception):
                    await writing
            spooler.close()

    def close(self) -> None:
        """Close the active round (on shutdown) so nothing waits on it."""
        self._end_buffered("the combiner is stopping")
        if self._round is not None:
            self._round.closed = True
            self._round.all_answered.set()
            for gate in (self._round.gate, self._round.tasks):
                if gate is not None:
                    gate.close()
