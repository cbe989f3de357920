"""Global models as downloads send them: one cached copy per model, streamed to clients in chunks.

A small model is serialized once into download messages that every client gets, with no copy per
download; a larger one is streamed from the model store to each client with a bounded read-ahead,
so the combiner never holds a copy of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np

from combiner.grants import GrantGate
from combiner.transfers import Abortable, TransferLimits
from fedn.chunking import DEFAULT_CHUNK_BYTES, iter_chunks
from fedn.clock import Clock
from fedn.codec import NamedArrays, TensorSpec, decode_payload, model_header_size, read_model_header, split_model
from fedn.compression import Compression, decode_model_downlink, encode_model_downlink
from fedn.errors import ChecksumMismatch, InvalidModel
from fedn.metrics import CombinerMetrics
from fedn.models import model_key
from fedn.retry import retry
from fedn.store.base import ModelStore
from fedn.wire import ModelHeaderInfo, model_header_message
from fedn.wire_chunks import model_data_message

__all__ = ["CachedModel", "ModelCache", "download_concurrency"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_MODEL_CACHE_SIZE = 3
_STREAM_BUFFER_BYTES = 8 << 20  # what one download stream may hold: its read-ahead and gRPC's send queue
# Train tasks out per free download stream: the next client is already asking when a stream frees,
# which hides a round trip, while the calls that wait stay few (each costs ~20 KiB of gRPC state).
_TASKS_PER_DOWNLOAD_STREAM = 2
_READ_AHEAD_BYTES = 1 << 20  # chunks of a stored model read per thread hop, per download
_READ_RETRY_S = 30.0  # how long a read with no deadline of its own (a client's download) retries the store
_EXPECTED_KEPT = 16  # digests the reducer named, by model id
_CODED_KEPT = 2  # compressed downloads, and models as clients decoded them, by (model id, codec text)


def _keep(cache: OrderedDict[tuple[str, str], T], key: tuple[str, str], value: T) -> None:
    cache[key] = value
    while len(cache) > _CODED_KEPT:
        cache.popitem(last=False)


def download_concurrency(model_bytes: int, max_downloads: int, max_download_bytes: int) -> int:
    """Downloads of one model streamed at once: each holds up to min(model, ``_STREAM_BUFFER_BYTES``)."""
    per_stream = max(1, min(model_bytes, _STREAM_BUFFER_BYTES))
    return max(1, min(max_downloads, max_download_bytes // per_stream))


@dataclass(frozen=True)
class CachedModel:
    """A global model as downloads send it: its header message, and its data messages when it is small
    enough to hold (``model_cache_bytes``). A larger model keeps only where its payload is stored."""

    model_id: str
    manifest: list[TensorSpec]
    sha256: str
    size: int
    header: bytes  # the serialized first message of a download
    messages: tuple[bytes, ...] | None  # the serialized data messages, if held
    key: str = ""
    offset: int = 0  # where the payload starts in the stored blob
    blob_sha256: str = ""  # of the whole stored blob, as the reducer records it (ModelRecord.sha256)


class ModelCache:
    """The last few global models, and the download streams and train-task grants that pace them."""

    def __init__(
        self,
        store: ModelStore,
        clock: Clock,
        *,
        model_cache_bytes: int = 16 << 20,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        max_concurrent_downloads: int = 16,
        max_download_bytes: int = 16 << 20,
        grant_timeout_s: float = 30.0,
        min_transfer_bytes_per_s: float = 64 * 1024,
        transfer_grace_s: float = 30.0,
        metrics: CombinerMetrics | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._model_cache_bytes = model_cache_bytes
        self._chunk_bytes = chunk_bytes
        self._max_downloads = max_concurrent_downloads
        self._max_download_bytes = max_download_bytes
        self._grant_timeout_s = grant_timeout_s
        self._cache: OrderedDict[str, CachedModel] = OrderedDict()
        self._lock = asyncio.Lock()
        self._download_slots: dict[str, asyncio.Semaphore] = {}
        self._expected: OrderedDict[str, str] = OrderedDict()  # model id -> sha256 the reducer recorded
        self._downlinks: OrderedDict[tuple[str, str], CachedModel] = OrderedDict()
        self._bases: OrderedDict[tuple[str, str], dict[str, np.ndarray]] = OrderedDict()
        self._coding = asyncio.Lock()  # one model encoded or decoded at a time: each costs a model of memory
        self._transfers = TransferLimits(min_transfer_bytes_per_s, transfer_grace_s)
        self._sent = metrics.model_bytes_sent if metrics is not None else None
        if metrics is not None:  # read when scraped, on the event loop that changes the cache
            metrics.model_cache_bytes.set_function(self.held_bytes)
            metrics.model_cache_models.set_function(lambda: len(self._cache))

    def held_bytes(self) -> int:
        """Bytes of model data held in memory for downloads (larger models are streamed, not held)."""
        return sum(m.size for m in list(self._cache.values()) if m.messages is not None)

    @property
    def store(self) -> ModelStore:
        return self._store

    def expect(self, model_id: str, sha256: str) -> None:
        """The reducer's word on ``model_id``'s digest (its plan or announcement); "" says nothing. A model
        held under another digest is dropped, and refused from then on."""
        if not sha256:
            return
        self._expected[model_id] = sha256
        self._expected.move_to_end(model_id)
        while len(self._expected) > _EXPECTED_KEPT:
            self._expected.popitem(last=False)
        held = self._cache.get(model_id)
        if held is not None and held.blob_sha256 != sha256:
            self._cache.pop(model_id, None)

    def _verify(self, model: CachedModel) -> None:
        expected = self._expected.get(model.model_id)
        if expected and model.blob_sha256 != expected:
            self._cache.pop(model.model_id, None)
            message = (
                f"model {model.model_id} in the model store has sha256 {model.blob_sha256}, not {expected} as the "
                "reducer recorded: refused (the stored copy was altered or replaced)"
            )
            logger.error("%s", message)
            raise ChecksumMismatch(message)

    async def get(self, model_id: str, *, deadline: float | None = None, expected_sha256: str = "") -> CachedModel:
        """The model, loaded once and kept while it is among the last few asked for; NotFound if unknown,
        ChecksumMismatch if its stored blob is not the one the reducer recorded (``expected_sha256``, or
        what :meth:`expect` was told).

        A store error is retried until ``deadline`` (on the clock; by default ``_READ_RETRY_S`` from
        now), then raised. A held model is returned at once, whatever another load waits for.
        """
        self.expect(model_id, expected_sha256)
        cached = self._cache.get(model_id)
        if cached is None:
            async with self._lock:
                cached = self._cache.get(model_id)
                if cached is None:
                    cached = await self._read(lambda: self._load(model_id), f"reading model {model_id}", deadline)
                    self._verify(cached)
                    self._cache[model_id] = cached
                    while len(self._cache) > _MODEL_CACHE_SIZE:
                        self._cache.popitem(last=False)
        self._verify(cached)
        if model_id in self._cache:
            self._cache.move_to_end(model_id)
        return cached

    async def _read(self, read: Callable[[], T], what: str, deadline: float | None) -> T:
        """``read()`` in a thread, retried through a store outage until ``deadline``."""
        if deadline is None:
            deadline = self._clock.now() + _READ_RETRY_S
        return await retry(lambda: asyncio.to_thread(read), deadline=deadline, clock=self._clock, what=what)

    def drop(self, model_id: str) -> bool:
        """Forget a held model and its compressed downloads (every client has it); a late download reads
        it from the store again (and encodes it again)."""
        for key in [k for k in self._downlinks if k[0] == model_id]:
            del self._downlinks[key]
        return self._cache.pop(model_id, None) is not None

    def cached_model_ids(self) -> list[str]:
        return list(self._cache)

    async def model_arrays(self, model_id: str, *, deadline: float | None = None) -> NamedArrays:
        """The model as arrays, read from the store (a held model is kept only as download messages);
        store errors are retried as :meth:`get` retries them."""
        model = await self.get(model_id, deadline=deadline)
        blob = await self._read(lambda: self._store.get(model.key), f"reading model {model_id}", deadline)
        manifest, payload = split_model(blob)
        return decode_payload(manifest, payload)

    async def downlink(self, model: CachedModel, codec: Compression) -> CachedModel:
        """``model`` as a download in ``codec`` (fedn.compression): encoded once per (model, codec) and
        held, however many clients download it."""
        key = (model.model_id, codec.text())
        async with self._coding:
            coded = self._downlinks.get(key)
            if coded is None:
                arrays = await self.model_arrays(model.model_id)
                payload = await asyncio.to_thread(encode_model_downlink, arrays, model.manifest, codec)
                del arrays
                coded = await asyncio.to_thread(self._held_download, model, payload)
                _keep(self._downlinks, key, coded)
                logger.info("model %s encoded in %s for download: %d bytes", model.model_id, key[1], coded.size)
        return coded

    def _held_download(self, model: CachedModel, payload: bytes) -> CachedModel:
        sha256 = hashlib.sha256(payload).hexdigest()
        header = model_header_message(ModelHeaderInfo(model.model_id, model.manifest, sha256, len(payload)))
        messages = tuple(map(model_data_message, iter_chunks(payload, self._chunk_bytes)))
        return replace(model, sha256=sha256, size=len(payload), header=header, messages=messages)

    async def received_model(
        self, model_id: str, downlink: Compression, *, deadline: float | None = None
    ) -> dict[str, np.ndarray]:
        """The model as a client that downloaded it in ``downlink`` holds it: the base its compressed
        update is a delta from. Kept per (model, codec) for the round's updates."""
        key = (model_id, downlink.text())
        async with self._coding:
            base = self._bases.get(key)
            if base is None:
                base = await self.model_arrays(model_id, deadline=deadline)
                if not downlink.lossless:
                    model = await self.get(model_id, deadline=deadline)

                    def decoded() -> dict[str, np.ndarray]:
                        payload = encode_model_downlink(base, model.manifest, downlink)
                        return decode_model_downlink(payload, model.manifest, downlink)

                    base = await asyncio.to_thread(decoded)
                _keep(self._bases, key, base)
        return base

    def _load(self, model_id: str) -> CachedModel:
        """One pass over the stored blob: its header, then the payload kept (small) or only hashed (large)."""
        key = model_key(model_id)
        chunks = self._store.iter_chunks(key, 1 << 20)
        head = bytearray()
        for chunk in chunks:
            head += chunk
            if len(head) >= 8 and len(head) >= model_header_size(head):
                break
        offset = model_header_size(head)
        manifest, size = read_model_header(head)
        keep = size <= self._model_cache_bytes
        digest, blob_digest = hashlib.sha256(), hashlib.sha256(head)
        payload = bytearray(head[offset:]) if keep else None
        digest.update(memoryview(head)[offset:])
        received = len(head) - offset
        for chunk in chunks:
            digest.update(chunk)
            blob_digest.update(chunk)
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
        return CachedModel(model_id, manifest, sha256, size, header, messages, key, offset, blob_digest.hexdigest())

    # -- downloads -------------------------------------------------------------

    async def download_messages(self, model: CachedModel, context: Abortable | None = None) -> AsyncIterator[bytes]:
        """A download's serialized messages: the header, then the data, held or read from the store off
        the event loop (and serialized there). A download that outlasts its transfer deadline (a client
        that stopped reading) is cut off, which frees its download stream, and its call (``context``)
        is ended with DEADLINE_EXCEEDED."""
        what = f"download of model {model.model_id}"
        cutoff = self._transfers.cutoff(self._clock, what, model.size, context=context)
        sent = 0
        try:
            with cutoff:
                async with contextlib.aclosing(self._download_messages(model)) as messages:
                    async for message in messages:
                        yield message
                        sent += len(message)
        finally:  # once per download: a counter's lock per chunk costs more than it tells
            if self._sent is not None:
                self._sent.inc(sent)

    async def _download_messages(self, model: CachedModel) -> AsyncIterator[bytes]:
        yield model.header
        if model.messages is not None:
            for message in model.messages:
                yield message
            return
        pieces = self._stored_messages(model, self._chunk_bytes)
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

    def _stored_messages(self, model: CachedModel, chunk_bytes: int) -> Iterator[bytes]:
        """The serialized data messages of a model read from the store, ``chunk_bytes`` of its payload each
        (the blob's header skipped). Each byte is copied once, from the store's read into its message
        (docs/benchmarks.md: a 40 MB download's CPU fell to about a sixth when it stopped taking six)."""
        skip, parts, held, sent = model.offset, [], 0, 0
        for piece in self._store.iter_chunks(model.key, chunk_bytes):
            view = memoryview(piece).cast("B")
            if skip:
                taken = min(skip, len(view))
                view, skip = view[taken:], skip - taken
            while view:
                take = min(chunk_bytes - held, len(view))
                parts.append(view[:take])
                held, view = held + take, view[take:]
                if held == chunk_bytes:
                    sent += held
                    yield model_data_message(*parts)
                    parts, held = [], 0
        if held:
            sent += held
            yield model_data_message(*parts)
        if sent != model.size:  # the blob changed under us: the client's digest check will refuse it too
            raise InvalidModel(f"model {model.model_id} changed in the store while it was served")

    def _download_streams(self, model: CachedModel) -> int:
        return download_concurrency(model.size, self._max_downloads, self._max_download_bytes)

    def download_slots(self, model: CachedModel) -> asyncio.Semaphore:
        """How many clients may download ``model`` at once: ``max_concurrent_downloads``, fewer for a large
        model, since each stream in flight holds up to ``_STREAM_BUFFER_BYTES`` of it in our and gRPC's
        buffers, and all of them together stay within ``max_download_bytes``."""
        slots = self._download_slots.get(model.model_id)
        if slots is None:
            while len(self._download_slots) >= 8:  # old models' semaphores; a waiter keeps its own reference
                self._download_slots.pop(next(iter(self._download_slots)))
            slots = self._download_slots[model.model_id] = asyncio.Semaphore(self._download_streams(model))
        return slots

    def task_gate(self, model: CachedModel, send: Callable[[str], None]) -> GrantGate:
        """Train tasks are handed out as download grants: a few per download stream of ``model``, the next
        as a client's download completes (or its grant lapses), so clients that wait cost no open call."""
        return GrantGate(
            self._download_streams(model) * _TASKS_PER_DOWNLOAD_STREAM,
            send,
            clock=self._clock,
            grant_timeout_s=self._grant_timeout_s,
        )
