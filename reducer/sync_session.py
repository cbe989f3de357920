"""Synchronous sessions: every round asks each combiner for its partial and merges them all.

A round is written (``pending``, then ``running`` with its combiners) before any combiner is asked,
and marked done only after its model is stored, so a reducer that dies mid-round runs the same
round (same id) again on restart; a done round is never re-run.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from fedn.aggregation import merge_metric_summaries
from fedn.aggregation.server_optimizers import make_server_optimizer
from fedn.clock import Clock
from fedn.errors import FednError
from fedn.models import load_model, model_key
from fedn.records import (
    ClientFailureRecord,
    CombinerRecord,
    Round,
    RoundPlan,
    RoundResult,
    RoundStatus,
    Session,
    SessionStatus,
    now,
)
from fedn.store.base import ModelStore, StateStore
from reducer.gateway import CombinerGateway
from reducer.merging import Merger, PartialFolder
from reducer.planning import Planner

__all__ = ["SyncSession"]

logger = logging.getLogger(__name__)


class SyncSession:
    """Runs a sync session's remaining rounds, one after the other, on the calling thread."""

    def __init__(
        self,
        state: StateStore,
        models: ModelStore,
        gateway: CombinerGateway,
        planner: Planner,
        merger: Merger,
        clock: Clock,
        stop: threading.Event,
    ) -> None:
        self._state = state
        self._models = models
        self._gateway = gateway
        self._planner = planner
        self._merger = merger
        self._clock = clock
        self._stop = stop

    def run(self, session: Session) -> Session:
        """Run rounds until the session has them all, fails, or the controller stops; returns it as stored."""
        existing = {r.index: r for r in self._state.list_rounds(session.id)}
        while session.rounds_done < session.rounds and not self._stop.is_set():
            index = session.rounds_done + 1
            round_ = existing.get(index) or Round(session_id=session.id, index=index, model_in=session.model_id)
            session = self.run_round(session, round_)
            if session.status == SessionStatus.FAILED:
                break
        return session

    def run_round(self, session: Session, round_: Round) -> Session:
        """Run one round; returns the session as updated (advanced, failed with the reason, or as it was
        if the controller stopped: the round is left running, and a restarted reducer runs it again)."""
        round_ = round_.model_copy(
            update={
                "status": RoundStatus.PENDING,
                "model_in": session.model_id,
                "model_out": None,
                "failures": [],
                "reason": None,
                "combiners": [],
                "started_at": None,
                "finished_at": None,
                "duration_s": None,
            }
        )
        self._state.put_round(round_)
        if reason := self._planner.wait_for_clients(session):
            return self._merger.fail(session, reason, round_=round_)
        if self._stop.is_set():
            return session

        shares = self._planner.shares(session)
        started = self._clock.now()
        round_ = round_.model_copy(
            update={"status": RoundStatus.RUNNING, "combiners": [s.combiner.id for s in shares], "started_at": now()}
        )
        self._state.put_round(round_)
        logger.info(
            "session %s round %d (%s): running on %s",
            session.id,
            round_.index,
            round_.id,
            ", ".join(s.combiner.id for s in shares),
        )
        optimizer = make_server_optimizer(session.strategy, session.strategy_config)
        plan = self._planner.plan(session, optimizer, round_id=round_.id, index=round_.index)
        timeout_s = self._planner.call_timeout_s(session)
        results: list[RoundResult] = []
        failures: list[ClientFailureRecord] = []
        partials = self._merger.folder(session.model_id)
        used: list[RoundResult] = []
        # The merge waits for the slowest combiner; what can be done before (reading and folding the
        # other partials, reading the current global model) is done while it works, one partial at a
        # time, so the reducer holds one partial, not one per combiner, and the merge only stores.
        with ThreadPoolExecutor(max_workers=len(shares) + 1, thread_name_prefix="run-round") as pool:
            previous = pool.submit(load_model, self._models, model_key(session.model_id))
            futures = {
                s.combiner.id: pool.submit(self._round_at, s.combiner, Planner.for_share(plan, s), timeout_s, partials)
                for s in shares
            }
            for combiner_id, future in futures.items():
                try:
                    result, unusable = future.result()
                except FednError as exc:  # whatever status the combiner gave: its failure, not the round's
                    logger.warning("round %s: %s", round_.id, exc.message)
                    failures.append(ClientFailureRecord(client_id="", combiner_id=combiner_id, error=exc.message))
                    continue
                results.append(result)
                failures.extend(result.failures)
                if unusable:
                    logger.warning("round %s: combiner %s: %s", round_.id, combiner_id, unusable)
                    failures.append(ClientFailureRecord(client_id="", combiner_id=combiner_id, error=unusable))
                elif result.partial_key:
                    used.append(result)
        if self._stop.is_set():
            return session

        num_updates = sum(r.num_updates for r in used)
        round_ = round_.model_copy(
            update={
                "num_selected": sum(r.num_selected for r in results),
                "num_updates": num_updates,
                "num_rejected": sum(r.num_rejected for r in results),
                "total_weight": sum(r.total_weight for r in used),
                "failures": failures,
                "metrics": merge_metric_summaries((r.metrics, r.total_weight) for r in used),
            }
        )
        if num_updates < session.min_clients:
            reason = f"{num_updates} updates arrived, min_clients is {session.min_clients}"
            if failures:
                reason += "; " + "; ".join(f"{f.client_id or f.combiner_id}: {f.error}" for f in failures[:5])
            return self._merger.fail(session, reason, round_=round_, started=started)

        merged = partials.merge.finish()
        try:
            current = previous.result()
        except FednError:
            current = None  # the merger reads it again, and reports the error if it persists
        return self._merger.apply(
            session, round_, merged.arrays, optimizer, started=started, num_partials=len(used), previous=current
        )

    def _round_at(
        self, combiner: CombinerRecord, plan: RoundPlan, timeout_s: float, partials: PartialFolder
    ) -> tuple[RoundResult, str]:
        """Run ``plan`` at one combiner and fold its partial in as soon as it is stored; returns the
        combiner's result and why its partial could not be used ("" if it was, or if it had none)."""
        result = self._gateway.run_round(combiner, plan, timeout_s)
        return result, partials.fold(result) if result.partial_key else ""
