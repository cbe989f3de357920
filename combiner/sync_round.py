"""A synchronous round at a combiner: the selected clients train once, and the round ends when all of
them answered (an update, a reported failure, a disconnect) or its deadline passed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import replace

from combiner.compressed import RAW, is_raw, update_compression
from combiner.grants import GrantGate
from combiner.model_cache import CachedModel
from combiner.run import UPDATE_FAULTS, RoundMetrics, RunContext, store_result, train_task
from combiner.selected_round import SelectedRound
from combiner.staging import UpdateCodec, is_big
from fedn import heap
from fedn.aggregation import Aggregator, aggregator_config
from fedn.compression import Compression, parse_compression
from fedn.errors import FailedPrecondition, InvalidArgument
from fedn.records import RoundPlan, RoundResult
from fedn.wire import TaskInfo, UpdateHeaderInfo

__all__ = ["SyncRound"]

logger = logging.getLogger(__name__)


class SyncRound(SelectedRound):
    """One round of a sync session on this combiner's clients; implements :class:`combiner.run.Run`.

    The round runs as its own task (:meth:`start`), not tied to the reducer's call: a restarted
    reducer that asks for the same round again joins it, or gets its result if it already ended.
    """

    def __init__(
        self,
        ctx: RunContext,
        plan: RoundPlan,
        model: CachedModel,
        aggregator: Aggregator,
        selected: list[str],
        *,
        started_at: float | None = None,
    ) -> None:
        super().__init__(ctx, plan, selected, started_at)
        self._tally.metrics = ctx.metrics  # a training round's updates are counted as they fold or are refused
        self._manifest = model.manifest
        self._aggregator = aggregator
        self._metrics = RoundMetrics()
        self._accepted: list[str] = []
        self._downloaded: set[str] = set()
        self._uploading: set[str] = set()
        self._lock = asyncio.Lock()  # one fold at a time, and none once the round has closed
        self._uplink_bytes = 0  # payload bytes of the updates folded, as sent
        self._train_task = replace(
            train_task(plan.round_id, plan, plan.model_id, plan.round_index),
            compression=plan.compression,
            downlink_compression=plan.downlink_compression,
        )
        self._downlink_of: dict[str, str] = {}  # the downlink codec each client was told
        compression = None if is_raw(plan.compression) else parse_compression(plan.compression)
        if compression is not None and not ctx.clients.all_announce(selected, compression.codec):
            compression = None  # some upload raw: slots are sized for raw updates, so staging keeps its bound
        self._uploads: GrantGate = ctx.stager.upload_gate(
            model.manifest,
            lambda c: ctx.clients.send(c, TaskInfo("upload_grant", plan.round_id, plan.session_id)),
            compression,
        )
        self._tasks: GrantGate = ctx.models.task_gate(model, self._send_train_task)

    @staticmethod
    def check_plan(plan: RoundPlan) -> None:
        """Refuse a plan before any client trains for it."""
        if plan.timeout_s <= 0:
            raise InvalidArgument("round timeout must be positive")
        aggregator_config(plan.aggregator, plan.aggregator_config)
        parse_compression(plan.compression)
        if parse_compression(plan.downlink_compression).codec == "topk":
            raise InvalidArgument("downlink_compression topk cannot compress a whole model; use it for updates")

    def _send_train_task(self, client_id: str) -> None:
        sent = self._ctx.clients.send(client_id, self._train_task)
        if sent is not None:
            self._downlink_of[client_id] = sent.downlink_compression or RAW

    def downlink_codec(self, text: str) -> Compression:
        """The codec of a download in ``text``: the round's own (or raw), none other."""
        if is_raw(text):
            return Compression()
        if text != self.plan.downlink_compression:
            raise InvalidArgument(
                f"round {self.run_id} sends its model in {self.plan.downlink_compression!r} or uncompressed, "
                f"not {text[:80]!r}"
            )
        return parse_compression(text)

    async def _update_codec(self, header: UpdateHeaderInfo) -> UpdateCodec | None:
        """None for a raw update; else its codec and the model its client received, to decode it against."""
        compression = update_compression(header.compression, self.plan)
        if compression is None:
            return None
        downlink = parse_compression(self._downlink_of.get(header.client_id, RAW))
        deadline = self._started_at + self.plan.timeout_s
        base = await self._ctx.models.received_model(self.plan.model_id, downlink, deadline=deadline)
        return UpdateCodec(compression, base)

    # -- clients -----------------------------------------------------------------

    def _busy(self, client_id: str) -> bool:
        return client_id in self._uploading

    def _answer(self, client_id: str, error: str | None = None) -> None:
        self._tasks.release(client_id)
        if client_id not in self._uploading:
            self._uploads.release(client_id)  # an uploading client's slot is freed when its staged buffer is
        super()._answer(client_id, error)

    def admit(self, client_id: str) -> tuple[bool, int]:
        self._expect(client_id)
        return self._uploads.ask(client_id)

    def report_failure(self, client_id: str, error: str) -> None:
        self._expect(client_id)
        logger.warning("client %s failed round %s: %s", client_id, self.plan.round_id, error)
        self._answer(client_id, error)

    def downloaded(self, model_id: str, client_id: str) -> None:
        """Once every client of the round has the model, the cached copy is dropped: the round's memory
        is then the running aggregate and the staged updates, not the model too."""
        if self._closed or model_id != self.plan.model_id or client_id not in self._selected:
            return
        self._downloaded.add(client_id)
        self._tasks.release(client_id)  # its download is done: the next client gets its task
        if self._downloaded >= self._selected and self._ctx.models.drop(model_id):
            logger.debug("round %s: every client has model %s; dropped it from the cache", self.run_id, model_id)

    # -- updates -----------------------------------------------------------------

    async def receive(self, header: UpdateHeaderInfo, chunks: AsyncIterator[bytes]) -> int:
        client_id, round_id = header.client_id, header.round_id
        self._expect(client_id)
        self._uploading.add(client_id)
        stager, aggregator = self._ctx.stager, self._aggregator
        try:
            spool = aggregator.reads_spooled
            codec = await self._update_codec(header)
            staging = stager.staged(self._uploads, self._manifest, header, chunks, spool=spool, codec=codec)
            async with staging as arrays, self._lock:
                if self._closed:
                    raise FailedPrecondition(f"round {round_id!r} closed while the update was uploading")
                if is_big(header):
                    await asyncio.to_thread(aggregator.add, arrays, header.num_examples)
                else:
                    aggregator.add(arrays, header.num_examples)
                self._metrics.add(header.metrics, header.num_examples)
                self._uplink_bytes += header.model.payload_bytes
                self._accepted.append(client_id)
                self._tally.accept()
                self._ctx.stragglers.delivered(client_id)
                self._answer(client_id)
                count = aggregator.count
            del arrays
            await stager.trim_after(header)
        except UPDATE_FAULTS as exc:  # the update's own fault: final for this round
            if not self._closed:
                self._tally.reject(client_id, exc)
                self._answer(client_id)
            logger.warning("rejected update from client %s in round %s: %s", client_id, round_id, exc.message)
            raise
        finally:
            self._uploading.discard(client_id)
            self._uploads.release(client_id)  # a grant (RequestUpload) of an update refused before it was staged
        logger.debug("folded update from client %s into round %s (%d so far)", client_id, round_id, count)
        return count

    # -- the round ---------------------------------------------------------------

    async def _drive(self) -> RoundResult:
        plan, selected, ctx = self.plan, sorted(self._selected), self._ctx
        logger.info(
            "round %s (session %s, #%d) started on %s with %d clients, timeout %.1fs",
            plan.round_id,
            plan.session_id,
            plan.round_index,
            ctx.combiner_id,
            len(selected),
            plan.timeout_s,
        )
        timed_out = False
        try:
            if selected:
                for client_id in selected:
                    if self._tasks.request(client_id):
                        self._send_train_task(client_id)
                try:
                    remaining = self._started_at + plan.timeout_s - ctx.clock.now()
                    await ctx.clock.wait_for(self._all_answered.wait(), remaining)
                except TimeoutError:
                    timed_out = True
            async with self._lock:
                self._closed = True
        finally:
            self._closed = True
            self._uploads.close()
            self._tasks.close()
        missed = sorted(self._selected - self._answered)
        for client_id in missed:
            self._tally.fail(client_id, f"no update within the round deadline ({plan.timeout_s:g}s)")
        if timed_out:  # not when the round was abandoned: those clients had no full deadline
            ctx.stragglers.missed(missed)
        result = await store_result(
            ctx,
            plan.round_id,
            None if self._discard else self._aggregator,
            num_selected=len(self._selected),
            tally=self._tally,
            metrics=self._metrics,
            client_ids=self._accepted,
            deadline=ctx.store_deadline(self._started_at, plan.timeout_s),
            uplink_bytes=self._uplink_bytes,
        )
        await asyncio.to_thread(heap.trim)  # the round's buffers are gone: return their memory to the OS
        logger.info(
            "round %s ended on %s: %d/%d updates, %d rejected, %d failed, %.2fs",
            plan.round_id,
            ctx.combiner_id,
            result.num_updates,
            result.num_selected,
            result.num_rejected,
            len(result.failures),
            ctx.clock.now() - self._started_at,
        )
        return result
