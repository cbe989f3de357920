"""Asynchronous (FedBuff) sessions at the reducer.

Every live combiner with clients has one ``RunRound`` call of an async plan in flight. A call
returns when that combiner's buffer holds ``buffer_size`` staleness-scaled deltas: a *flush*. The
reducer merges that one partial at once (global + mean delta, through the session's server
optimizer), which makes the next global *version*, tells every combiner (``AnnounceModel``) and
sends the combiner its next call. No combiner waits for another, and no client waits for a round.

Each flush is stored as a :class:`~fedn.records.Round` whose ``index`` is the version it made
(``rounds`` and ``rounds_done`` of the session count versions). The record is written with the
partial's key before the merge, so a reducer that dies mid-merge finishes it from the stored partial.

A combiner whose call finds it unreachable takes its open buffer with it: each client it held at its
last heartbeat is listed (with the combiner's own failure) among the failures of the next flush's
record, so every version keeps one record and no client that did not deliver goes unlisted.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import ThreadPoolExecutor

from fedn.aggregation.server_optimizers import ServerOptimizer, make_server_optimizer
from fedn.clock import Clock
from fedn.errors import FednError, NotFound, Unavailable
from fedn.models import partial_key
from fedn.records import (
    ClientFailureRecord,
    CombinerRecord,
    Round,
    RoundPlan,
    RoundResult,
    RoundStatus,
    Session,
    SessionStatus,
    new_id,
    now,
)
from fedn.store.base import ModelStore, StateStore
from fedn.wire import Announcement
from reducer.gateway import CombinerGateway
from reducer.merging import Merger, MergeRefused, PartialRefused
from reducer.planning import Planner
from reducer.results import ResultRefused, bound_failures

__all__ = ["AsyncSession"]

logger = logging.getLogger(__name__)

_ANNOUNCE_TIMEOUT_S = 5.0
_MAX_RETRY_S = 30.0
_POLL_S = 0.5  # how soon a combiner that came online or finished backing off gets its call


class AsyncSession:
    """Runs one async session to its end (or until ``stop``); merges happen on the calling thread only.

    Per-session state (calls in flight, back-offs) lives here, so the controller makes one per session.
    """

    def __init__(
        self,
        state: StateStore,
        models: ModelStore,
        gateway: CombinerGateway,
        planner: Planner,
        merger: Merger,
        clock: Clock,
        stop: threading.Event,
        wake: threading.Event,
    ) -> None:
        """``wake`` is set by whoever sets ``stop`` (and by each call that returns), so the loop looks
        again at once instead of at its next poll."""
        self._state = state
        self._models = models
        self._gateway = gateway
        self._planner = planner
        self._merger = merger
        self._clock = clock
        self._stop = stop
        self._results: queue.Queue[tuple[str, RoundResult | FednError]] = queue.Queue()
        self._arrived = wake
        self._in_flight: set[str] = set()
        self._retry_at: dict[str, float] = {}  # on the clock
        self._failures: dict[str, int] = {}
        self._held: dict[str, tuple[str, ...]] = {}  # each call's combiner: its clients when it was sent
        self._lost: list[ClientFailureRecord] = []  # clients of unreachable combiners, for the next flush

    def run(self, session: Session) -> Session:
        """Make the session's remaining versions; returns it done, failed with the reason, or as it was
        when the controller stopped."""
        optimizer = make_server_optimizer(session.strategy, session.strategy_config)
        pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="async-flush")
        try:
            session = self._resume(session, optimizer)
            if session.rounds_done < session.rounds:
                session = self._loop(session, optimizer, pool)
        except MergeRefused as exc:  # the global model itself is unusable: no flush can be merged
            session = self._merger.fail(self._state.get_session(session.id), exc.message)  # as last advanced
        finally:
            if session.status == SessionStatus.FAILED or session.rounds_done >= session.rounds:
                self._announce(pool, session, final=True)
            pool.shutdown(wait=False, cancel_futures=True)
        return session

    def _loop(self, session: Session, optimizer: ServerOptimizer, pool: ThreadPoolExecutor) -> Session:
        if reason := self._planner.wait_for_clients(session):
            return self._merger.fail(session, reason)
        idle_limit_s = self._planner.call_timeout_s(session)
        last_flush = self._clock.now()
        while session.rounds_done < session.rounds and not self._stop.is_set():
            self._launch(session, optimizer, pool)
            arrived = self._next_result(last_flush + idle_limit_s)
            if arrived is not None:
                combiner_id, outcome = arrived
                self._in_flight.discard(combiner_id)
                if isinstance(outcome, FednError):
                    if isinstance(outcome, Unavailable):
                        self._lose_clients(combiner_id, outcome.message)
                    elif isinstance(outcome, ResultRefused):  # listed with the next flush, like a lost buffer
                        self._lost.append(
                            ClientFailureRecord(client_id="", combiner_id=combiner_id, error=outcome.message)
                        )
                    self._back_off(session, combiner_id, outcome.message)
                elif not outcome.partial_key:
                    self._failures.pop(combiner_id, None)
                else:
                    try:
                        session = self._flush(session, outcome, optimizer)
                    except PartialRefused as exc:  # its flush is marked failed; that combiner backs off
                        self._back_off(session, combiner_id, exc.message)
                    else:
                        self._failures.pop(combiner_id, None)
                        last_flush = self._clock.now()
                        if session.rounds_done < session.rounds:
                            self._announce(pool, session, final=False)
                        continue
            idle_s = self._clock.now() - last_flush
            if idle_s >= idle_limit_s:
                return self._merger.fail(session, f"no combiner sent a partial for {idle_s:.0f}s (round_timeout_s)")
        return session

    def _next_result(self, deadline: float) -> tuple[str, RoundResult | FednError] | None:
        """The next call's outcome, or None once ``deadline`` or the next poll (on the clock) came first."""
        try:
            return self._results.get_nowait()
        except queue.Empty:
            pass
        self._clock.wait(self._arrived, min(_POLL_S, deadline - self._clock.now()))
        self._arrived.clear()  # a result put after this is still in the queue for the next look
        try:
            return self._results.get_nowait()
        except queue.Empty:
            return None

    def _lose_clients(self, combiner_id: str, error: str) -> None:
        """``combiner_id`` did not answer: its buffer is gone, and what its clients trained with it."""
        held = self._held.get(combiner_id, ())
        logger.warning("async session: combiner %s unreachable; %d clients listed as failed", combiner_id, len(held))
        self._lost.append(ClientFailureRecord(client_id="", combiner_id=combiner_id, error=error))
        self._lost.extend(
            ClientFailureRecord(
                client_id=c, combiner_id=combiner_id, error=f"combiner failed: {error} (client of that combiner)"
            )
            for c in held
        )

    def _back_off(self, session: Session, combiner_id: str, reason: str) -> None:
        self._failures[combiner_id] = failures = self._failures.get(combiner_id, 0) + 1
        delay = min(_MAX_RETRY_S, 0.5 * 2**failures)
        self._retry_at[combiner_id] = self._clock.now() + delay
        logger.warning("async session %s: %s; retrying in %.1fs", session.id, reason, delay)

    # -- calls to the combiners ----------------------------------------------

    def _launch(self, session: Session, optimizer: ServerOptimizer, pool: ThreadPoolExecutor) -> None:
        """One call in flight on every live combiner with clients (after a back-off if it just failed)."""
        at = self._clock.now()
        version = session.rounds_done + 1
        for share in self._planner.shares(session):
            combiner = share.combiner
            if combiner.id in self._in_flight or self._retry_at.get(combiner.id, at) > at:
                continue
            # each call is its own flush: a new id, so its partial's key is its own
            plan = self._planner.plan(session, optimizer, round_id=new_id(), index=version)
            self._in_flight.add(combiner.id)
            self._held[combiner.id] = share.client_ids
            pool.submit(self._call, combiner, Planner.for_share(plan, share), self._planner.call_timeout_s(session))

    def _call(self, combiner: CombinerRecord, plan: RoundPlan, timeout_s: float) -> None:
        try:
            outcome: RoundResult | FednError = self._merger.check_result(
                self._gateway.run_round(combiner, plan, timeout_s), round_id=plan.round_id, combiner_id=combiner.id
            )
        except FednError as exc:
            outcome = exc
        except Exception as exc:  # never lose the slot: the loop must hear back from every call
            logger.exception("async call to combiner %s failed", combiner.id)
            outcome = FednError(f"combiner {combiner.id}: {type(exc).__name__}: {exc}")
        self._results.put((combiner.id, outcome))
        self._arrived.set()

    def _announce(self, pool: ThreadPoolExecutor, session: Session, *, final: bool) -> None:
        try:
            sha256 = self._planner.model_sha256(session)
        except FednError as exc:  # announced all the same: a combiner that needs the model checks it then
            logger.warning("async session %s: model %s has no readable record: %s", session.id, session.model_id, exc)
            sha256 = ""
        info = Announcement(session.id, session.model_id, session.rounds_done, final, model_sha256=sha256)
        calls = [
            pool.submit(self._gateway.announce, c, info, _ANNOUNCE_TIMEOUT_S)
            for c in self._planner.listeners(final=final)
        ]
        if final:  # the combiners should stop their clients before the session is reported done
            for call in calls:
                try:
                    call.result(timeout=_ANNOUNCE_TIMEOUT_S + 1)
                except Exception as exc:
                    logger.warning("async session %s: final announcement not delivered: %s", session.id, exc)

    # -- flushes ---------------------------------------------------------------

    def _flush(self, session: Session, result: RoundResult, optimizer: ServerOptimizer) -> Session:
        """Record a combiner's flush as the next version's round, then merge it."""
        round_ = Round(
            id=result.round_id,
            session_id=session.id,
            index=session.rounds_done + 1,
            status=RoundStatus.RUNNING,
            model_in=session.model_id,
            combiners=[result.combiner_id],
            num_selected=result.num_selected,
            num_updates=result.num_updates,
            num_rejected=result.num_rejected,
            total_weight=result.total_weight,
            uplink_bytes=result.uplink_bytes,
            failures=bound_failures([*self._lost, *result.failures]),
            metrics=result.metrics,
            started_at=now(),
        )
        self._state.put_round(round_)  # before the merge: a restarted reducer re-merges this partial
        self._lost = []
        return self._merger.apply_delta(session, round_, result.partial_key, optimizer)

    def _resume(self, session: Session, optimizer: ServerOptimizer) -> Session:
        """Finish what the previous reducer left: a flush whose model was stored is completed (its
        version is the session's, never made again); a merge it started is done now, from its stored
        partial; any other open flush is failed."""
        for round_ in self._state.list_rounds(session.id):  # in index order: completions chain
            if ended := self._merger.finish_ended(session, round_):
                session = ended
                continue
            if round_.status not in (RoundStatus.PENDING, RoundStatus.RUNNING):
                continue
            key = partial_key(round_.id, round_.combiners[0]) if round_.combiners else ""
            if round_.index == session.rounds_done + 1 and key and self._models.exists(key):
                logger.info("async session %s: finishing the merge of version %d", session.id, round_.index)
                try:
                    session = self._merger.apply_delta(session, round_, key, optimizer)
                    continue
                except PartialRefused as exc:  # its round is marked failed
                    logger.warning("async session %s: %s", session.id, exc.message)
                    continue
                except NotFound:
                    pass
            self._merger.fail_round(round_, "the reducer stopped before this merge and its partial is gone")
        return session
