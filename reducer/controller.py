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

import logging
import threading

from fedn.clock import Clock, SystemClock
from fedn.errors import FailedPrecondition, FednError, StoreError
from fedn.records import Session, SessionMode, SessionStatus, now
from fedn.store.base import ModelStore, StateStore
from reducer.async_session import AsyncSession
from reducer.gateway import CombinerGateway, WatchedGateway
from reducer.merging import Merger
from reducer.planning import Planner
from reducer.registry import CombinerRegistry
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
        self._state = state
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
        self._planner = Planner(registry, self._stop, rpc_grace_s=rpc_grace_s, resume_wait_s=resume_wait_s, state=state)
        self._merger = Merger(
            state,
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
        self._wake.set()
        self._registry.wake_waiters()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def wake(self) -> None:
        """A session was created: look for work now rather than at the next poll."""
        self._wake.set()

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

    def session_runner(self, session: Session) -> SyncSession | AsyncSession:
        """A fresh runner for ``session``'s mode, given the controller's planner, merger, clock and stop."""
        shared = (self._state, self._models, self._gateway, self._planner, self._merger, self._clock, self._stop)
        if session.mode == SessionMode.ASYNC:
            return AsyncSession(*shared, wake=self._wake)  # stop() sets it: the session's wait ends at once
        return SyncSession(*shared, round_retries=self._round_retries)

    def run_session(self, session: Session) -> Session:
        """Run ``session`` until it is done, failed or the controller stops; returns it as stored."""
        if session.status == SessionStatus.RUNNING:
            logger.info("session %s: resuming after %d of %d", session.id, session.rounds_done, session.rounds)
        else:
            unit = "versions" if session.mode == SessionMode.ASYNC else "rounds"
            logger.info("session %s: starting, %d %s", session.id, session.rounds, unit)
        session = session.model_copy(update={"status": SessionStatus.RUNNING, "updated_at": now()})
        self._state.put_session(session)
        session = self.session_runner(session).run(session)
        if session.status != SessionStatus.FAILED and session.rounds_done >= session.rounds:
            session = session.model_copy(update={"status": SessionStatus.DONE, "updated_at": now()})
            self._state.put_session(session)
            logger.info("session %s: done, final model %s", session.id, session.model_id)
        return session


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
