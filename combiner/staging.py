"""Upload staging: refuse an update from its header, bound how many are staged, stage each whole.

An update is received completely and checked (size, sha256, finite values) before any of it is
folded, so a rejected update never touches a running aggregate. Staged updates are bounded in count
(``max_concurrent_uploads``) and bytes (``max_staged_bytes``, though one may always be staged); a
large one is spooled to a temporary file and read back a slice at a time.

A compressed update (fedn.compression) is staged as it arrived, compressed: its size, the slots and
the spool count compressed bytes, and its tensors are decoded lazily against the model its client
received, a slice at a time, by the checks and the fold (a spooled one from a memory map of its file).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

import numpy as np

from combiner.compressed import is_raw
from combiner.grants import GrantGate
from combiner.transfers import TransferLimits
from fedn import heap
from fedn.chunking import ChunkAssembler, ChunkSpool
from fedn.clock import Clock
from fedn.codec import (
    SpooledTensor,
    TensorSpec,
    check_finite,
    check_manifest,
    decode_payload,
    payload_bytes,
    spooled_arrays,
)
from fedn.compression import CompressedTensor, Compression, compressed_payload_bytes, decode_update
from fedn.errors import InvalidArgument, InvalidModel, PayloadTooLarge
from fedn.metrics import CombinerMetrics
from fedn.wire import UpdateHeaderInfo

__all__ = ["FOLD_IN_THREAD_BYTES", "UpdateCodec", "UploadStager", "is_big"]

FOLD_IN_THREAD_BYTES = 4 << 20  # larger updates are checked and folded off the event loop
_SPOOL_WRITE_BYTES = 1 << 20  # chunks of a spooled upload written per thread hop


Staged = Mapping[str, np.ndarray | SpooledTensor | CompressedTensor]


@dataclass(frozen=True)
class UpdateCodec:
    """How an update is compressed, and the model its client received (what it is a delta from)."""

    compression: Compression
    base: Mapping[str, np.ndarray]


def is_big(header: UpdateHeaderInfo) -> bool:
    """Whether the update is checked and folded off the event loop, and its memory trimmed afterwards;
    a compressed one by the size it decodes to, which is what the checks and the fold read."""
    size = header.model.payload_bytes
    if not is_raw(header.compression):
        size = max(size, payload_bytes(header.model.tensors))
    return size > FOLD_IN_THREAD_BYTES


async def _check_finite_values(arrays: Staged, *, big: bool) -> None:
    """Every update is checked here, whatever its aggregator checks (a plug-in may check nothing)."""

    def check() -> None:
        for name, array in arrays.items():
            check_finite(name, array)

    await asyncio.to_thread(check) if big else check()


class UploadStager:
    """The combiner's limits on updates, the upload gates that enforce them, and the staging itself."""

    def __init__(
        self,
        clock: Clock,
        *,
        max_update_bytes: int = 1 << 30,
        max_concurrent_uploads: int = 8,
        max_staged_bytes: int = 64 << 20,
        grant_timeout_s: float = 30.0,
        spool_over_bytes: int = 16 << 20,
        spool_dir: str | None = None,
        max_num_examples: float = 1e9,
        min_transfer_bytes_per_s: float = 64 * 1024,
        transfer_grace_s: float = 30.0,
        metrics: CombinerMetrics | None = None,
    ) -> None:
        self._clock = clock
        self._max_update_bytes = max_update_bytes
        self._max_uploads = max_concurrent_uploads
        self._max_staged_bytes = max_staged_bytes
        self._grant_timeout_s = grant_timeout_s
        self._spool_over_bytes = spool_over_bytes
        self._spool_dir = spool_dir
        self._max_num_examples = max_num_examples
        self._transfers = TransferLimits(min_transfer_bytes_per_s, transfer_grace_s)
        self._metrics = metrics
        self._gates: weakref.WeakSet[GrantGate] = weakref.WeakSet()
        self.staged_bytes = 0  # of updates being received, checked or folded
        self.staged_updates = 0
        self.spooled_bytes = 0  # of those, in temporary files
        if metrics is not None:  # read when scraped, on the event loop that changes them
            metrics.staged_bytes.set_function(lambda: self.staged_bytes)
            metrics.staged_updates.set_function(lambda: self.staged_updates)
            metrics.spooled_bytes.set_function(lambda: self.spooled_bytes)
            metrics.upload_queue.set_function(self.upload_queue)

    def upload_queue(self) -> int:
        """Clients waiting for an upload slot, in every run's gate."""
        return sum(gate.waiting for gate in list(self._gates))

    def upload_gate(
        self, manifest: list[TensorSpec], notify: Callable[[str], None], compression: Compression | None = None
    ) -> GrantGate:
        """Upload slots for updates of ``manifest`` (in ``compression``, whose bytes are counted): bounded in
        count and in bytes, but one may always be staged."""
        size = payload_bytes(manifest) if compression is None else compressed_payload_bytes(manifest, compression)
        slots = min(self._max_uploads, self._max_staged_bytes // max(1, size))
        gate = GrantGate(slots, notify, clock=self._clock, grant_timeout_s=self._grant_timeout_s)
        self._gates.add(gate)
        return gate

    def check_size(self, size: int) -> None:
        if size > self._max_update_bytes:
            raise PayloadTooLarge(f"update of {size} bytes exceeds the combiner's limit of {self._max_update_bytes}")

    def check_header(
        self, manifest: list[TensorSpec], header: UpdateHeaderInfo, compression: Compression | None = None
    ) -> None:
        """Refuse an update from its header alone, before it takes a staging slot; ``compression`` is
        the codec it was found to use (None: raw, and its header must say so)."""
        weight = header.num_examples
        if not (0 < weight <= self._max_num_examples):  # NaN fails too
            raise InvalidArgument(
                f"num_examples must be a positive finite number of at most {self._max_num_examples:g} "
                f"(the combiner's --max-num-examples), got {weight:g}"
            )
        size = header.model.payload_bytes
        self.check_size(size)
        check_manifest(manifest, header.model.tensors)
        if compression is None:
            if not is_raw(header.compression):
                raise InvalidArgument(f"this run takes uncompressed updates, not {header.compression[:80]!r}")
            if size != payload_bytes(manifest):
                raise InvalidModel(f"header announces {size} bytes, the model has {payload_bytes(manifest)}")
            return
        expected = compressed_payload_bytes(manifest, compression)
        if size != expected:
            raise InvalidModel(f"header announces {size} bytes, the model in {compression.text()} has {expected}")

    def _check_fits(self, gate: GrantGate, size: int) -> None:
        """Refuse an update larger than ``gate``'s slots were sized for. A round whose clients all announced
        its codec sizes them by compressed bytes; one of them sending its update raw anyway took a slot
        too, and raw updates in every slot staged several times ``max_staged_bytes``."""
        if gate.capacity > 1 and gate.capacity * size > self._max_staged_bytes:
            raise InvalidArgument(
                f"an update of {size} bytes does not fit this round's {gate.capacity} upload slots, sized for "
                "compressed updates within the combiner's --max-staged-bytes: send it in the round's compression"
            )

    @contextlib.asynccontextmanager
    async def staged(
        self,
        gate: GrantGate,
        manifest: list[TensorSpec],
        header: UpdateHeaderInfo,
        chunks: AsyncIterator[bytes],
        *,
        spool: bool,
        codec: UpdateCodec | None = None,
    ) -> AsyncIterator[Staged]:
        """Check the header, take an upload slot, stage the update; the slot is held until the block
        ends (the fold), so staged buffers stay within the bound."""
        self.check_header(manifest, header, None if codec is None else codec.compression)
        self._check_fits(gate, header.model.payload_bytes)
        staging = self.staged_update(manifest, header, chunks, spool=spool, codec=codec)
        async with gate.slot(header.client_id), staging as arrays:
            handed_at = time.perf_counter()  # a measurement, not a deadline: the real clock
            yield arrays
            if self._metrics is not None:
                self._metrics.fold_seconds.observe(time.perf_counter() - handed_at)

    @contextlib.asynccontextmanager
    async def staged_update(
        self,
        manifest: list[TensorSpec],
        header: UpdateHeaderInfo,
        chunks: AsyncIterator[bytes],
        *,
        spool: bool = True,
        codec: UpdateCodec | None = None,
    ) -> AsyncIterator[Staged]:
        """Receive an update whole and check it (size, sha256, finite values), then lend its tensors.

        One up to ``spool_over_bytes``, or any when ``spool`` is false (an aggregator that needs numpy
        arrays), is staged in memory. A larger one goes to a temporary file in ``spool_dir`` and is
        read back a slice at a time by the checks and the fold, so staging it costs disk, not a copy
        of the model in memory; the file is gone when the block ends.
        """
        size = header.model.payload_bytes
        self.staged_bytes += size
        self.staged_updates += 1
        received = 0

        async def counted() -> AsyncIterator[bytes]:
            nonlocal received
            async for chunk in chunks:
                received += len(chunk)
                yield chunk

        try:
            async with (
                contextlib.aclosing(counted()) as counting,
                self._staged(manifest, header, counting, spool=spool, codec=codec) as arrays,
            ):
                yield arrays
        finally:
            self.staged_bytes -= size
            self.staged_updates -= 1
            if self._metrics is not None:  # once per update, what arrived of it (all of it, or until it failed)
                self._metrics.update_bytes_received.inc(received)

    @contextlib.asynccontextmanager
    async def _staged(
        self,
        manifest: list[TensorSpec],
        header: UpdateHeaderInfo,
        chunks: AsyncIterator[bytes],
        *,
        spool: bool,
        codec: UpdateCodec | None,
    ) -> AsyncIterator[Staged]:
        size, sha = header.model.payload_bytes, header.model.sha256
        # from here the client holds an upload slot: it must send its update within its transfer deadline
        cutoff = self._transfers.cutoff(self._clock, f"upload of client {header.client_id}'s update", size)
        if size <= self._spool_over_bytes or not spool:
            assembler = ChunkAssembler(size, sha, self._max_update_bytes)
            with cutoff:
                async for chunk in chunks:
                    assembler.add(chunk)
            payload = assembler.finish()
            big = is_big(header)
            if codec is None:
                arrays: Staged = decode_payload(manifest, payload)
            elif spool:
                arrays = decode_update(payload, codec.base, manifest, codec.compression)
            else:  # an aggregator that needs numpy arrays (it holds every update anyway)
                arrays = await _densified(payload, codec, manifest, big=big)
            del payload
            await _check_finite_values(arrays, big=big)
            yield arrays
            return
        spooler = ChunkSpool(size, sha, self._max_update_bytes, self._spool_dir)
        writing: asyncio.Future | None = None
        self.spooled_bytes += size
        try:
            # Written and hashed off the event loop, a batch at a time, while the next batch arrives: one
            # write in flight keeps the order, and waiting for each hop would slow the upload to the
            # pace of thread handoffs.
            batch: list[bytes] = []
            batch_bytes = 0
            with cutoff:
                async for chunk in chunks:
                    batch.append(chunk)
                    batch_bytes += len(chunk)
                    if batch_bytes >= _SPOOL_WRITE_BYTES:
                        if writing is not None:
                            await asyncio.shield(writing)  # a cut-off upload still lets its write end first
                        writing = asyncio.ensure_future(asyncio.to_thread(spooler.add_all, batch))
                        batch, batch_bytes = [], 0
            if writing is not None:
                await writing
            spooler.add_all(batch)  # less than one batch
            del batch
            if codec is None:
                spooled: Staged = spooled_arrays(manifest, spooler.finish())
            else:  # read through a memory map of the file: the page cache, not a copy in this process
                mapped = np.memmap(spooler.finish(), dtype=np.uint8, mode="r", shape=(size,))
                spooled = decode_update(mapped, codec.base, manifest, codec.compression)
            await _check_finite_values(spooled, big=True)
            yield spooled
        finally:
            if writing is not None:  # the upload may have failed mid-way: let a write in flight end first
                with contextlib.suppress(Exception):
                    await writing
            spooler.close()
            self.spooled_bytes -= size

    @staticmethod
    async def trim_after(header: UpdateHeaderInfo) -> None:
        """After a large update is folded and its staged buffer dropped, give that memory back to the OS
        before the next one arrives."""
        if is_big(header):
            await asyncio.to_thread(heap.trim)


async def _densified(payload: bytes, codec: UpdateCodec, manifest: list[TensorSpec], *, big: bool) -> Staged:
    """A compressed update decoded whole (its layout checked first), for aggregators that read numpy arrays."""

    def dense() -> dict[str, np.ndarray]:
        lazy = decode_update(payload, codec.base, manifest, codec.compression)
        return {name: tensor.to_numpy() for name, tensor in lazy.items()}

    return await asyncio.to_thread(dense) if big else dense()
