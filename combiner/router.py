"""Which run a call belongs to: the combiner keeps one active run, a sync round or an async run.

Every call that names a round id goes to the run that owns it; a call for a run that is gone is
refused as closed or unknown. Starting a sync round ends an async run and vice versa; a sync round
that the reducer moved on from is abandoned (it stores what it has) before the next one starts.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator

from combiner.async_run import AsyncRun
from combiner.clients import ClientConnection
from combiner.compressed import is_raw
from combiner.eval_round import EvalRound
from combiner.run import Run, RunContext, failure_text
from combiner.sync_round import SyncRound
from fedn.aggregation import make_aggregator
from fedn.compression import Compression
from fedn.errors import FailedPrecondition, InvalidArgument
from fedn.models import stored_result
from fedn.records import RoundPlan, RoundResult, SessionMode
from fedn.retry import retry
from fedn.wire import Announcement, TaskInfo, UpdateHeaderInfo
from fedn.wire_eval import EvaluationReportInfo

__all__ = ["RunRouter"]

logger = logging.getLogger(__name__)

_CLOSED_RUNS_KEPT = 64  # ids of ended runs remembered, to tell "closed" from "unknown"


class RunRouter:
    """The combiner's clients, models and its one active run, behind the calls the servicer makes."""

    def __init__(self, ctx: RunContext) -> None:
        self._ctx = ctx
        self._run: Run | None = None  # the active one, or the last one (closed) to tell late calls so
        self._closed_runs: deque[str] = deque(maxlen=_CLOSED_RUNS_KEPT)

    @property
    def combiner_id(self) -> str:
        return self._ctx.combiner_id

    @property
    def context(self) -> RunContext:
        return self._ctx

    def connected_client_ids(self) -> list[str]:
        return self._ctx.clients.connected_client_ids()

    def idle_client_ids(self) -> list[str]:
        """Connected clients the active run does not hold (not among a sync round's candidates, no
        train task from an async run): ending their streams breaks no run. Latest connected first."""
        run = self._run
        return self._ctx.clients.idle_client_ids(run.run_id if run is not None and not run.closed else "")

    # -- client events ---------------------------------------------------------------

    def has_client(self, client_id: str) -> bool:
        return self._ctx.clients.has(client_id)

    def connect(self, client_id: str, name: str, codecs: frozenset[str] = frozenset()) -> ClientConnection:
        conn, replaced = self._ctx.clients.connect(client_id, name, codecs)
        if self._run is not None:
            self._run.client_connected(client_id, replaced)
        return conn

    def heartbeat(self) -> TaskInfo:
        return self._ctx.clients.heartbeat()

    def disconnect(self, conn: ClientConnection) -> None:
        if self._ctx.clients.disconnect(conn) and self._run is not None:
            self._run.client_left(conn.client_id)

    def download_done(self, model_id: str, client_id: str) -> None:
        if self._run is not None:
            self._run.downloaded(model_id, client_id)

    def downlink_codec(self, model_id: str, text: str) -> Compression:
        """The codec of a download of ``model_id`` in ``text``: raw, or the running sync round's downlink
        codec for its own model; InvalidArgument for any other (each costs an encoding of the model)."""
        if is_raw(text):
            return Compression()
        run = self._run
        if not isinstance(run, SyncRound) or run.closed or run.plan.model_id != model_id:
            raise InvalidArgument(f"model {model_id} is not offered in compression {text[:80]!r} here: ask for it raw")
        return run.downlink_codec(text)

    # -- calls for a run -----------------------------------------------------------

    def _run_for(self, round_id: str) -> Run:
        run = self._run
        if run is None or run.run_id != round_id:
            state = "closed" if round_id in self._closed_runs else "unknown"
            raise FailedPrecondition(f"round {round_id!r} is {state} on combiner {self.combiner_id}")
        return run

    def request_upload(self, round_id: str, client_id: str, size: int) -> tuple[bool, int]:
        """May ``client_id`` upload its update of ``round_id`` now? (granted, clients queued before it)"""
        self._ctx.stager.check_size(size)
        return self._run_for(round_id).admit(client_id)

    def report_failure(self, round_id: str, client_id: str, error: str) -> None:
        self._run_for(round_id).report_failure(client_id, failure_text(error))

    async def receive_update(self, header: UpdateHeaderInfo, chunks: AsyncIterator[bytes]) -> int:
        """Validate one streamed update completely, then fold it; returns the run's accepted count."""
        return await self._run_for(header.round_id).receive(header, chunks)

    def report_evaluation(self, report: EvaluationReportInfo) -> int:
        """Fold one client's evaluation into the evaluation round it names; returns how many arrived."""
        run = self._run_for(report.round_id)
        if not isinstance(run, EvalRound):
            raise FailedPrecondition(f"round {report.round_id!r} is not an evaluation round")
        return run.evaluated(report)

    def abandon(self, session_id: str, round_id: str, reason: str) -> bool:
        """The reducer stopped ``session_id``: end whatever of it runs here (``round_id``, or its async run)
        at once, keeping none of it; its clients are free for the next run. False if none of it runs here."""
        run = self._run
        if run is None or run.closed or getattr(run, "session_id", None) != session_id:
            return False
        if round_id and isinstance(run, SyncRound | EvalRound) and run.run_id != round_id:
            return False
        logger.info("session %s stopped: abandoning %s on %s (%s)", session_id, run.run_id, self.combiner_id, reason)
        if isinstance(run, SyncRound | EvalRound):
            run.abandon(reason)
        self._retire(f"session {session_id} stopped: {reason}")
        return True

    # -- runs ------------------------------------------------------------------------

    async def run_round(self, plan: RoundPlan) -> RoundResult:
        """Run ``plan`` on this combiner's clients: a sync round (returns when all answered or the deadline
        passed), or the next flush of an async session (returns when a buffer is full or the timeout passed)."""
        if plan.mode == SessionMode.ASYNC:
            run: Run = await self._async_run(plan)
        elif plan.mode == SessionMode.EVALUATE:
            run = await self._eval_round(plan, self._ctx.clock.now())
            self._ctx.clients.hold(run.run_id, self.connected_client_ids())
        else:
            started = self._ctx.clock.now()  # the round's deadline counts from the call, store lookup included
            stored = await self._stored_result(plan, deadline=started + plan.timeout_s)
            if stored is not None:
                return stored
            run = await self._sync_round(plan, started)
            # every client it may have selected (no await since): none is shed while the round runs
            self._ctx.clients.hold(run.run_id, self.connected_client_ids())
        return await run.result(plan)

    async def _stored_result(self, plan: RoundPlan, *, deadline: float) -> RoundResult | None:
        """The result this combiner stored with its partial of ``plan``'s round, if it finished that round
        before (and a restart, or the next round, took it from memory): returned again rather than the
        round run afresh, which would ask the clients again and overwrite the partial. None if there is
        none (or it is unusable), or the round is running here now (it is joined)."""
        current = self._run
        if isinstance(current, SyncRound) and current.run_id == plan.round_id:
            return None
        ctx = self._ctx
        store = ctx.models.store
        try:
            result = await retry(
                lambda: asyncio.to_thread(stored_result, store, plan.round_id, ctx.combiner_id),
                deadline=deadline,
                clock=ctx.clock,
                what=f"looking for a stored partial of round {plan.round_id}",
            )
        except InvalidArgument as exc:
            logger.warning("round %s: stored partial unusable, running the round again: %s", plan.round_id, exc.message)
            return None
        if result is not None:
            logger.info(
                "round %s asked for again: it ended here before, returning its stored result (%d updates)",
                plan.round_id,
                result.num_updates,
            )
        return result

    def _retire(self, reason: str) -> Run | None:
        """Close the active run, if any, and remember its id; returns it."""
        run = self._run
        if run is not None:
            if not run.closed:
                run.close(reason)
            if run.run_id not in self._closed_runs:
                self._closed_runs.append(run.run_id)
        return run

    async def _sync_round(self, plan: RoundPlan, started: float) -> SyncRound:
        current = self._run
        if isinstance(current, SyncRound) and current.run_id == plan.round_id:
            logger.info("round %s asked for again (reducer restarted?): joining it", plan.round_id)
            return current
        # a plan that cannot run (bad rule, unknown model) is refused before it ends the round running now
        SyncRound.check_plan(plan)
        model = await self._ctx.models.get(
            plan.model_id, deadline=started + plan.timeout_s, expected_sha256=plan.model_sha256
        )
        aggregator = make_aggregator(plan.aggregator, model.manifest, plan.aggregator_config)
        reason = f"a synchronous round ({plan.round_id}) started"
        if isinstance(current, SyncRound):
            reason = f"the reducer asked for round {plan.round_id}"
        retired = self._retire(reason)
        if retired is not None:
            await retired.wait_closed()
        connected = self.connected_client_ids()
        selected = self._ctx.stragglers.select(connected, plan.max_clients, plan.sample_seed, plan.round_id)
        rnd = SyncRound(self._ctx, plan, model, aggregator, selected, started_at=started)
        self._run = rnd
        rnd.start()
        return rnd

    async def _eval_round(self, plan: RoundPlan, started: float) -> EvalRound:
        current = self._run
        if isinstance(current, EvalRound) and current.run_id == plan.round_id:
            logger.info("evaluation round %s asked for again (reducer restarted?): joining it", plan.round_id)
            return current
        EvalRound.check_plan(plan)
        model = await self._ctx.models.get(
            plan.model_id, deadline=started + plan.timeout_s, expected_sha256=plan.model_sha256
        )
        retired = self._retire(f"an evaluation round ({plan.round_id}) started")
        if retired is not None:
            await retired.wait_closed()
        connected = self.connected_client_ids()
        selected = self._ctx.stragglers.select(connected, plan.max_clients, plan.sample_seed, plan.round_id)
        rnd = EvalRound(self._ctx, plan, model, selected, started_at=started)
        self._run = rnd
        rnd.start()
        return rnd

    async def _async_run(self, plan: RoundPlan) -> AsyncRun:
        """Join (or start) the async session of ``plan``."""
        AsyncRun.check_plan(plan)
        deadline = self._ctx.clock.now() + plan.timeout_s
        # refuse an unknown model, or one that is not what the reducer recorded, before clients go
        model = await self._ctx.models.get(plan.model_id, deadline=deadline, expected_sha256=plan.model_sha256)
        run = self._run
        if isinstance(run, AsyncRun) and not run.closed and run.session_id == plan.session_id:
            run.update_plan(plan)
            return run
        self._retire(f"async session {plan.session_id} started")
        run = AsyncRun(self._ctx, plan, model, lease_s=max(60.0, 3 * plan.timeout_s))
        self._run = run
        logger.info(
            "async session %s started on %s: buffer %d, %d clients",
            plan.session_id,
            self.combiner_id,
            plan.buffer_size,
            len(self._ctx.clients),
        )
        run.start()
        return run

    def announce(self, info: Announcement) -> bool:
        """The reducer's word that an async session's model moved on; False if that session does not run here."""
        run = self._run
        if not isinstance(run, AsyncRun) or run.closed or run.session_id != info.session_id:
            return False
        if info.final:
            self._retire(f"the session ended at version {info.model_version}")
        else:
            self._ctx.models.expect(info.model_id, info.model_sha256)  # checked as clients download it
            run.advance(info.model_id, info.model_version)
        return True

    def close(self) -> None:
        """End the active run (on shutdown) so nothing waits on it."""
        self._retire("the combiner is stopping")
