"""Picks the next session and runs it, sync or async, on one background thread.

Every step is written to the state store before it is acted on. The controller owns the loop, the
stop signal and the back-off; a :class:`~reducer.sync_session.SyncSession` or
:class:`~reducer.async_session.AsyncSession` runs the session and returns it, and both share one
:class:`~reducer.planning.Planner` and one :class:`~reducer.merging.Merger`.

Any error that reaches the loop (the store is away, a stored record does not validate, a bug) is
logged in one line and waited out with exponential back-off on the clock; the next pass reads the
state again from the store before acting on it. A session whose run keeps raising something other
than a store error is failed with the reason after ``max_session_errors`` passes in a row.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import cast

from fedn.clock import Clock, SystemClock
from fedn.errors import FailedPrecondition, FednError, NotFound, StoreError
from fedn.records import RoundStatus, Session, SessionMode, SessionStatus, now
from fedn.store.base import ModelStore, StateStore
from reducer.async_session import AsyncSession
from reducer.eval_session import EvalSession
from reducer.evaluation import FederatedEvaluator
from reducer.gateway import CombinerGateway, WatchedGateway
from reducer.merging import Merger
from reducer.planning import Planner
from reducer.registry import CombinerRegistry
from reducer.session_writes import StopMarkedState
from reducer.sync_session import SyncSession

__all__ = ["Controller", "check_session_capacity"]

logger = logging.getLogger(__name__)

_IDLE_POLL_S = 1.0


class Controller:
    """One background thread; sessions run one at a time, oldest first; running ones resume first."""

    def __init__(
        self,
        state: StateStore,
        models: ModelStore,
        registry: CombinerRegistry,
        gateway: CombinerGateway,
        *,
        rpc_grace_s: float = 15.0,
        resume_wait_s: float = 30.0,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        max_session_errors: int = 5,
        round_retries: int = 2,
        max_num_examples: float = 1e9,
        max_clients_per_combiner: int = 10_000,
        clock: Clock | None = None,
    ) -> None:
        """``max_num_examples`` and ``max_clients_per_combiner`` bound what a combiner's result may
        report (see :mod:`reducer.results`)."""
        self._stop_requests: dict[str, str] = {}  # session id -> who asked
        # every session write of this controller keeps a requested stop (see reducer.session_writes)
        self._sessions = StopMarkedState(state, self._stop_requests)
        self._state = cast(StateStore, self._sessions)
        self._models = models
        self._registry = registry
        self._gateway = WatchedGateway(gateway, registry)
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._max_session_errors = max_session_errors
        self._round_retries = round_retries
        self._clock = clock or SystemClock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._planner_args = {"rpc_grace_s": rpc_grace_s, "resume_wait_s": resume_wait_s, "state": state}
        self._planner = Planner(registry, self._stop, **self._planner_args)
        # the session being run, and the event that ends its run: set by stop() and by request_stop()
        self._lock = threading.Lock()
        self._current: str | None = None
        self._halt = threading.Event()
        self._merger = Merger(
            self._state,
            models,
            self._clock,
            max_num_examples=max_num_examples,
            max_clients_per_combiner=max_clients_per_combiner,
        )

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="controller", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        self._halt.set()
        self._wake.set()
        self._registry.wake_waiters()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def wake(self) -> None:
        """A session was created: look for work now rather than at the next poll."""
        self._wake.set()

    def request_stop(self, session_id: str, by: str) -> Session:
        """Stop a session for ``by`` (an admin): a pending one ends ``stopped`` now; a running one is
        marked (so a restarted reducer does not resume it), its round is abandoned at every combiner,
        and the controller ends it ``stopped`` once its calls have returned. Returns it as stored."""
        session = self._state.get_session(session_id)
        if session.status not in (SessionStatus.PENDING, SessionStatus.RUNNING):
            raise FailedPrecondition(
                f"session {session_id} is {session.status.value}: only a pending or running session can be stopped"
            )
        with self._lock:
            self._stop_requests[session_id] = by
            running_here = self._current == session_id
        if session.status == SessionStatus.PENDING and not running_here:
            stopped = session.model_copy(
                update={"status": SessionStatus.STOPPED, "stop_requested_by": by, "stopped_by": by, "updated_at": now()}
            )
            self._state.put_session(stopped)
            logger.info("session %s: stopped by %s before it started", session_id, by)
            return stopped
        session = self._sessions.mark_stop(session_id, by)  # on the record as it is now, not as read above
        if session.status not in (SessionStatus.PENDING, SessionStatus.RUNNING):
            with self._lock:  # it ended meanwhile: the stop came too late to change it
                self._stop_requests.pop(session_id, None)
            return session
        if running_here:
            self._halt.set()
            self._wake.set()
            self._registry.wake_waiters()
            threading.Thread(target=self._abandon, args=(session_id, by), name="abandon", daemon=True).start()
        logger.info("session %s: stop requested by %s", session_id, by)
        return session

    def _abandon(self, session_id: str, by: str) -> None:
        """Tell every live combiner to drop what it runs for ``session_id``, so the calls waiting on it
        return now rather than at the round's deadline."""
        for combiner in self._registry.live():
            try:
                self._gateway.abandon(combiner, session_id, f"stopped by {by}", timeout_s=10.0)
            except Exception as exc:  # its round then ends at its deadline: slower, nothing lost
                text = exc.message if isinstance(exc, FednError) else repr(exc)
                logger.warning("session %s: combiner %s did not take the stop: %s", session_id, combiner.id, text)

    # -- the loop ----------------------------------------------------------

    def _loop(self) -> None:
        errors = 0  # passes in a row that raised
        # per session, at its rounds_done as stored: runs in a row that raised something else than StoreError
        strikes: dict[tuple[str, int], int] = {}
        while not self._stop.is_set():
            session = None
            try:
                session = self._next_session()
                if session is None:
                    errors = 0
                    self._clock.wait(self._wake, _IDLE_POLL_S)
                    self._wake.clear()
                    continue
                self.run_session(session)
                errors = 0
                strikes.clear()
            except Exception as exc:  # nothing unstored was marked done: wait, read the state again, go on
                reason = _describe(exc)
                if session is not None and not isinstance(exc, StoreError):
                    at = (session.id, session.rounds_done)  # a session that moved on starts counting again
                    strikes[at] = strikes.get(at, 0) + 1
                    if strikes[at] >= self._max_session_errors:  # a bug or bad data: do not loop on it
                        logger.error("controller: session %s: giving up", session.id, exc_info=exc)
                        self._fail_unexpectedly(session.id, f"{reason} ({strikes.pop(at)} times in a row)")
                        continue
                delay = min(self._max_backoff_s, self._backoff_s * 2**errors)
                errors += 1
                where = f"session {session.id}: " if session else ""
                logger.error("controller: %s%s; retrying in %.1fs", where, reason, delay)
                self._clock.wait(self._stop, delay)

    def _fail_unexpectedly(self, session_id: str, error: str) -> None:
        try:
            self._merger.fail(self._state.get_session(session_id), error)  # as stored, not as last seen
        except Exception as exc:
            logger.error("controller: could not mark session %s failed: %s", session_id, _describe(exc))

    def _next_session(self) -> Session | None:
        sessions = self._state.list_sessions(limit=1000)
        running = [s for s in sessions if s.status == SessionStatus.RUNNING]
        pending = [s for s in sessions if s.status == SessionStatus.PENDING]
        queue = sorted(running, key=lambda s: s.created_at) + sorted(pending, key=lambda s: s.created_at)
        return queue[0] if queue else None

    def session_runner(self, session: Session) -> SyncSession | AsyncSession | EvalSession:
        """A fresh runner for ``session``'s mode, given a planner, the merger, the clock and the event
        that ends the session's run (the controller stops, or the session is stopped)."""
        halt = self._halt
        planner = Planner(self._registry, halt, **self._planner_args)
        shared = (self._state, self._models, self._gateway, planner, self._merger, self._clock, halt)
        if session.mode == SessionMode.ASYNC:
            return AsyncSession(*shared, wake=self._wake)  # stop() sets it: the session's wait ends at once
        evaluator = self.evaluator(planner)
        if session.mode == SessionMode.EVALUATE:
            return EvalSession(self._state, evaluator, self._merger, halt)
        return SyncSession(*shared, round_retries=self._round_retries, evaluator=evaluator)

    def evaluator(self, planner: Planner | None = None) -> FederatedEvaluator:
        return FederatedEvaluator(self._state, self._gateway, planner or self._planner, self._merger, self._clock)

    def run_session(self, session: Session) -> Session:
        """Run ``session`` until it is done, failed, stopped or the controller stops; returns it as stored."""
        with self._lock:
            self._current = session.id
            self._halt.clear()
            if self._stop.is_set():
                self._halt.set()
            by = self._stop_requests.get(session.id) or session.stop_requested_by
        try:
            if by:  # asked before this run began (or before a restart): not resumed
                return self._end_stopped(session, by)
            session = self._run(session)
            with self._lock:
                by = self._stop_requests.get(session.id)
            if by and session.status == SessionStatus.RUNNING:
                return self._end_stopped(session, by)
            return session
        finally:
            with self._lock:
                self._current = None
                self._stop_requests.pop(session.id, None)

    def _end_stopped(self, session: Session, by: str) -> Session:
        """The one way a session ends stopped: its open rounds first, then the session, with who stopped it.

        A round that ended (its model stored) before the session counted it still counts: the reducer
        may have died between the two writes, or a stop requested as the round ended may have written
        the session back as it was read. Otherwise a stopped session would show fewer rounds done than
        it has, and another model than its last round's."""
        reason = f"session stopped by {by}"
        with contextlib.suppress(NotFound):
            session = self._state.get_session(session.id)  # as last advanced
        for round_ in self._state.list_rounds(session.id):  # in index order: completions chain
            if ended := self._merger.finish_ended(session, round_):
                session = ended
            elif round_.status in (RoundStatus.PENDING, RoundStatus.RUNNING):
                self._state.put_round(
                    round_.model_copy(update={"status": RoundStatus.STOPPED, "reason": reason, "finished_at": now()})
                )
        session = session.model_copy(
            update={"status": SessionStatus.STOPPED, "stop_requested_by": by, "stopped_by": by, "updated_at": now()}
        )
        self._state.put_session(session)
        logger.info(
            "session %s: stopped by %s after %d of %d rounds", session.id, by, session.rounds_done, session.rounds
        )
        return session

    def _run(self, session: Session) -> Session:
        if session.status == SessionStatus.RUNNING:
            logger.info("session %s: resuming after %d of %d", session.id, session.rounds_done, session.rounds)
        else:
            unit = "versions" if session.mode == SessionMode.ASYNC else "rounds"
            logger.info("session %s: starting, %d %s", session.id, session.rounds, unit)
        session = session.model_copy(update={"status": SessionStatus.RUNNING, "updated_at": now()})
        self._state.put_session(session)
        session = self.session_runner(session).run(session)
        if session.mode == SessionMode.ASYNC and session.rounds_done >= session.rounds and not self._halt.is_set():
            self._evaluate_last(session)
        if session.status != SessionStatus.FAILED and session.rounds_done >= session.rounds:
            session = session.model_copy(update={"status": SessionStatus.DONE, "updated_at": now()})
            self._state.put_session(session)
            logger.info("session %s: done, final model %s", session.id, session.model_id)
        return session

    def _evaluate_last(self, session: Session) -> None:
        """An async session's final model is evaluated (when the session evaluates at all)."""
        if session.evaluate_every <= 0:
            return
        last = [r for r in self._state.list_rounds(session.id) if r.status == RoundStatus.DONE]
        if last:
            self.evaluator().evaluate_round(session, max(last, key=lambda r: r.index).id, self._halt)


def check_session_capacity(state: StateStore, max_pending: int) -> None:
    """FailedPrecondition if ``max_pending`` sessions are already pending or running: a session is
    refused when it is asked for, rather than queued without bound behind the others."""
    open_, offset, page = 0, 0, 1000
    while True:  # every session is looked at: an old pending one may sit behind many newer done ones
        sessions = state.list_sessions(limit=page, offset=offset)
        open_ += sum(s.status in (SessionStatus.PENDING, SessionStatus.RUNNING) for s in sessions)
        if open_ >= max_pending:
            raise FailedPrecondition(
                f"{open_} sessions are pending or running; at most {max_pending} (max_pending_sessions): "
                "wait for one to end, or stop one"
            )
        if len(sessions) < page:
            return
        offset += page


def _describe(exc: Exception, limit: int = 500) -> str:
    """One bounded log line for ``exc``: its message (a validation error's lines joined), no traceback."""
    text = exc.message if isinstance(exc, FednError) else f"{type(exc).__name__}: {exc}"
    text = " | ".join(line.strip() for line in text.splitlines() if line.strip())
    return text if len(text) <= limit else text[: limit - 3] + "..."
