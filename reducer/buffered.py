"""Asynchronous (FedBuff) sessions at the reducer.

Every live combiner with clients has one ``RunRound`` call of an async plan in flight. A call
returns when that combiner's buffer holds ``buffer_size`` staleness-scaled deltas; the reducer
merges that one partial at once (global + mean delta, through the session's server optimizer),
which makes the next global version, tells every combiner (``AnnounceModel``) and sends the
combiner its next call. No combiner waits for another, and no client waits for a round.

Each merge is recorded as a round (its ``index`` is the version it made). The round is written
with the partial's key before the merge, so a reducer that dies mid-merge re-merges it on resume.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from fedn.aggregation import add_delta, partial_manifest
from fedn.aggregation.server_optimizers import ServerOptimizer, make_server_optimizer
from fedn.codec import check_manifest, manifest_of
from fedn.errors import FednError, InvalidArgument, NotFound
from fedn.models import load_model, model_key, partial_key
from fedn.records import (
    CombinerRecord,
    Round,
    RoundPlan,
    RoundResult,
    RoundStatus,
    Session,
    SessionMode,
    SessionStatus,
    new_id,
    now,
)
from fedn.sampling import allocate_sample, sample_seed, sample_size
from fedn.store.base import ModelStore, StateStore
from fedn.wire import Announcement
from reducer.gateway import CombinerGateway
from reducer.registry import CombinerRegistry

__all__ = ["AsyncSessionRunner"]

logger = logging.getLogger(__name__)

ApplyMerge = Callable[..., Session]  # Controller.apply_merge


class _PartialRefused(FednError):
    """A combiner's partial could not be read or does not fit the global model: its round failed."""


_ANNOUNCE_TIMEOUT_S = 5.0
_MAX_RETRY_S = 30.0


class AsyncSessionRunner:
    """Runs one async session to its end (or until ``stop``); merges happen on the calling thread only."""

    def __init__(
        self,
        state: StateStore,
        models: ModelStore,
        registry: CombinerRegistry,
        gateway: CombinerGateway,
        apply_merge: ApplyMerge,
        stop: threading.Event,
        *,
        rpc_grace_s: float,
    ) -> None:
        self._state = state
        self._models = models
        self._registry = registry
        self._gateway = gateway
        self._apply_merge = apply_merge
        self._stop = stop
        self._rpc_grace_s = rpc_grace_s
        self._results: queue.Queue[tuple[str, RoundResult | FednError]] = queue.Queue()
        self._in_flight: set[str] = set()
        self._retry_at: dict[str, float] = {}
        self._failures: dict[str, int] = {}

    def run(self, session: Session) -> Session:
        assert session.mode == SessionMode.ASYNC
        optimizer = make_server_optimizer(session.strategy, session.strategy_config)
        pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="async-round")
        try:
            session = self._resume(session, optimizer)
            if session.rounds_done < session.rounds:
                session = self._loop(session, optimizer, pool)
        finally:
            if session.status == SessionStatus.FAILED or session.rounds_done >= session.rounds:
                self._announce(pool, session, final=True)
            pool.shutdown(wait=False, cancel_futures=True)
        return session

    def _loop(self, session: Session, optimizer: ServerOptimizer, pool: ThreadPoolExecutor) -> Session:
        seen = self._registry.wait_for_clients(session.min_clients, session.round_timeout_s, self._stop)
        if self._stop.is_set():
            return session
        if seen < session.min_clients:
            return self._fail(session, f"only {seen} clients connected, min_clients is {session.min_clients}")
        last_merge = time.monotonic()
        while session.rounds_done < session.rounds and not self._stop.is_set():
            self._launch(session, optimizer, pool)
            try:
                combiner_id, outcome = self._results.get(timeout=0.5)
            except queue.Empty:
                outcome = None
            else:
                self._in_flight.discard(combiner_id)
            if isinstance(outcome, FednError):
                self._back_off(session, combiner_id, outcome.message)
            elif outcome is not None and not outcome.partial_key:
                self._failures.pop(combiner_id, None)
            elif outcome is not None:
                try:
                    session = self._merge(session, outcome, optimizer)
                except _PartialRefused as exc:  # recorded as a failed round; that combiner backs off
                    self._back_off(session, combiner_id, exc.message)
                else:
                    self._failures.pop(combiner_id, None)
                    last_merge = time.monotonic()
                    if session.rounds_done < session.rounds:
                        self._announce(pool, session, final=False)
                    continue
            idle_s = time.monotonic() - last_merge
            if idle_s > session.round_timeout_s + self._rpc_grace_s:
                return self._fail(session, f"no combiner sent a partial for {idle_s:.0f}s (round_timeout_s)")
        return session

    def _back_off(self, session: Session, combiner_id: str, reason: str) -> None:
        self._failures[combiner_id] = failures = self._failures.get(combiner_id, 0) + 1
        delay = min(_MAX_RETRY_S, 0.5 * 2**failures)
        self._retry_at[combiner_id] = time.monotonic() + delay
        logger.warning("async session %s: %s; retrying in %.1fs", session.id, reason, delay)

    # -- calls to the combiners ----------------------------------------------

    def _launch(self, session: Session, optimizer: ServerOptimizer, pool: ThreadPoolExecutor) -> None:
        """One call in flight on every live combiner with clients (after a back-off if it just failed)."""
        live = [c for c in self._registry.live() if c.num_clients > 0]
        shares: dict[str, int] = {}  # concurrent trainers per combiner; 0 = all its clients
        if session.fraction < 1.0:
            counts = {c.id: c.num_clients for c in live}
            shares = allocate_sample(counts, sample_size(sum(counts.values()), session.fraction, session.min_clients))
        clock = time.monotonic()
        for combiner in live:
            if combiner.id in self._in_flight or self._retry_at.get(combiner.id, 0.0) > clock:
                continue
            if shares and shares.get(combiner.id, 0) == 0:
                continue
            plan = self._plan(session, optimizer, shares.get(combiner.id, 0))
            self._in_flight.add(combiner.id)
            pool.submit(self._call, combiner, plan, session.round_timeout_s + self._rpc_grace_s)

    def _plan(self, session: Session, optimizer: ServerOptimizer, max_clients: int) -> RoundPlan:
        return RoundPlan(
            round_id=new_id(),
            session_id=session.id,
            round_index=session.rounds_done + 1,
            model_id=session.model_id,
            aggregator=session.aggregator,
            aggregator_config=session.aggregator_config,
            config={**session.config, **optimizer.client_config()},
            timeout_s=session.round_timeout_s,
            max_clients=max_clients,
            sample_seed=sample_seed(session.seed, session.rounds_done + 1),
            mode=SessionMode.ASYNC,
            buffer_size=session.buffer_size,
            model_version=session.rounds_done,
            staleness_exponent=session.staleness_exponent,
            max_staleness=session.max_staleness,
        )

    def _call(self, combiner: CombinerRecord, plan: RoundPlan, timeout_s: float) -> None:
        try:
            outcome: RoundResult | FednError = self._gateway.run_round(combiner, plan, timeout_s)
        except FednError as exc:
            outcome = exc
        except Exception as exc:  # never lose the slot: the loop must hear back from every call
            logger.exception("async call to combiner %s failed", combiner.id)
            outcome = FednError(f"combiner {combiner.id}: {type(exc).__name__}: {exc}")
        self._results.put((combiner.id, outcome))

    def _announce(self, pool: ThreadPoolExecutor, session: Session, *, final: bool) -> None:
        info = Announcement(session.id, session.model_id, session.rounds_done, final)
        calls = [
            pool.submit(self._gateway.announce, c, info, _ANNOUNCE_TIMEOUT_S)
            for c in self._registry.live()
            if final or c.num_clients > 0
        ]
        if final:  # the combiners should stop their clients before the session is reported done
            for call in calls:
                try:
                    call.result(timeout=_ANNOUNCE_TIMEOUT_S + 1)
                except Exception as exc:
                    logger.warning("async session %s: final announcement not delivered: %s", session.id, exc)

    # -- merges ----------------------------------------------------------------

    def _merge(self, session: Session, result: RoundResult, optimizer: ServerOptimizer) -> Session:
        index = session.rounds_done + 1
        round_ = Round(
            id=result.round_id,
            session_id=session.id,
            index=index,
            status=RoundStatus.RUNNING,
            model_in=session.model_id,
            combiners=[result.combiner_id],
            num_selected=result.num_selected,
            num_updates=result.num_updates,
            num_rejected=result.num_rejected,
            total_weight=result.total_weight,
            failures=result.failures,
            metrics=result.metrics,
            started_at=now(),
        )
        self._state.put_round(round_)  # before the merge: a restarted reducer re-merges this partial
        return self._merge_round(session, round_, result.partial_key, optimizer)

    def _merge_round(self, session: Session, round_: Round, key: str, optimizer: ServerOptimizer) -> Session:
        started = time.monotonic()
        current = load_model(self._models, model_key(session.model_id))
        try:
            delta = load_model(self._models, key)
            # numpy would broadcast a wrong shape into the new global model
            check_manifest(partial_manifest(manifest_of(current)), manifest_of(delta), ordered=False)
        except (InvalidArgument, NotFound) as exc:
            reason = f"partial refused: {exc.message}"
            self._state.put_round(
                round_.model_copy(update={"status": RoundStatus.FAILED, "reason": reason, "finished_at": now()})
            )
            raise _PartialRefused(f"combiner {', '.join(round_.combiners)}: {reason}") from exc
        target = add_delta(current, delta)
        return self._apply_merge(session, round_, target, optimizer, started, previous=current)

    def _resume(self, session: Session, optimizer: ServerOptimizer) -> Session:
        """A merge the previous reducer started but did not finish is done now, from its stored partial."""
        for round_ in self._state.list_rounds(session.id):
            if round_.status not in (RoundStatus.PENDING, RoundStatus.RUNNING):
                continue
            key = partial_key(round_.id, round_.combiners[0]) if round_.combiners else ""
            if round_.index == session.rounds_done + 1 and key and self._models.exists(key):
                logger.info("async session %s: finishing the merge of version %d", session.id, round_.index)
                try:
                    session = self._merge_round(session, round_, key, optimizer)
                    continue
                except _PartialRefused as exc:  # its round is marked failed
                    logger.warning("async session %s: %s", session.id, exc.message)
                    continue
                except NotFound:
                    pass
            self._state.put_round(
                round_.model_copy(
                    update={
                        "status": RoundStatus.FAILED,
                        "reason": "the reducer stopped before this merge and its partial is gone",
                        "finished_at": now(),
                    }
                )
            )
        return session

    def _fail(self, session: Session, reason: str) -> Session:
        session = session.model_copy(update={"status": SessionStatus.FAILED, "error": reason, "updated_at": now()})
        self._state.put_session(session)
        logger.error("async session %s failed: %s", session.id, reason)
        return session
