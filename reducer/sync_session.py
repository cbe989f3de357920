"""Synchronous sessions: every round asks each combiner for its partial and merges them all.

A round is written (``pending``, then ``running`` with its combiners) before any combiner is asked,
and marked done only after its model is stored. A reducer that restarts mid-round asks the same
combiners for the same round (same id, same plan), after waiting (bounded) for them to be back: a
combiner that still holds that round joins it or returns its finished result, so no finished partial
is dropped. A round whose model was stored before the restart is completed, never run again.

A round that ends with fewer than ``min_clients`` updates (a combiner died with its clients' updates,
clients failed) is run again, as a new attempt with a new id, up to ``round_retries`` times, after a
back-off on the clock; only then does the session fail. Each attempt is a record of its own: the
ones that fell short are ``failed`` with their reason, and at most one per index is ``done``.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from fedn.aggregation import merge_metric_summaries
from fedn.aggregation.server_optimizers import make_server_optimizer
from fedn.clock import Clock
from fedn.errors import FednError
from fedn.models import stored_result
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
from reducer.evaluation import FederatedEvaluator, evaluation_due
from reducer.gateway import CombinerGateway
from reducer.merging import Merger, MergeRefused, PartialFolder
from reducer.planning import Planner, Share
from reducer.results import bound_failures, bound_metrics

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
        *,
        round_retries: int = 0,
        evaluator: FederatedEvaluator | None = None,
    ) -> None:
        self._round_retries = round_retries
        self._evaluator = evaluator  # None: no federated evaluation, whatever the session asks
        self._state = state
        self._models = models
        self._gateway = gateway
        self._planner = planner
        self._merger = merger
        self._clock = clock
        self._stop = stop

    def run(self, session: Session) -> Session:
        """Run rounds until the session has them all, fails, or the controller stops; returns it as stored."""
        # an attempt that fell short is superseded by the next one of the same index
        existing = {r.index: r for r in self._state.list_rounds(session.id) if r.status != RoundStatus.FAILED}
        attempts = 0
        while session.rounds_done < session.rounds and not self._stop.is_set():
            index = session.rounds_done + 1
            round_ = existing.pop(index, None)
            if round_ is not None and (ended := self._merger.finish_ended(session, round_)):
                session = ended
                continue
            round_ = round_ or Round(session_id=session.id, index=index, model_in=session.model_id)
            with self._planner.round_in_progress():  # rebalancing happens between rounds only
                session = self.run_round(session, round_, last_attempt=attempts >= self._round_retries)
                if session.rounds_done >= index and self._evaluator and evaluation_due(session, index):
                    self._evaluator.evaluate_round(session, round_.id, self._stop)
            if session.status == SessionStatus.FAILED:
                break
            if session.rounds_done < index and not self._stop.is_set():  # it fell short: a new attempt
                attempts += 1
                self._clock.wait(self._stop, min(session.round_timeout_s, 2.0 * attempts))
                continue
            attempts = 0
        return session

    def run_round(self, session: Session, round_: Round, *, last_attempt: bool = True) -> Session:
        """Run one round; returns the session as updated: advanced; failed with the reason; as it was if
        the controller stopped (the round is left running, and a restarted reducer runs it again); or as it
        was with the round marked failed, if it fell short of ``min_clients`` and is not ``last_attempt``."""
        shares, lost, stored = self._resume(session, round_)
        if shares or stored:  # as stored: running on these combiners, which are asked again for the same round
            update = {"model_in": session.model_id, "failures": [], "reason": None, "merged_from_store": []}
            round_ = round_.model_copy(update=update)
        elif not self._stop.is_set():
            round_ = round_.model_copy(
                update={
                    "status": RoundStatus.PENDING,
                    "model_in": session.model_id,
                    "model_out": None,
                    "failures": [],
                    "reason": None,
                    "merged_from_store": [],
                    "combiners": [],
                    "started_at": None,
                    "finished_at": None,
                    "duration_s": None,
                }
            )
            self._state.put_round(round_)
            if reason := self._planner.wait_for_clients(session):
                return self._merger.fail(session, reason, round_=round_)
            shares = self._planner.shares(session)
            round_ = round_.model_copy(
                update={
                    "status": RoundStatus.RUNNING,
                    "combiners": [s.combiner.id for s in shares],
                    "started_at": now(),
                }
            )
            self._state.put_round(round_)
        if self._stop.is_set():
            return session
        started = self._clock.now()
        logger.info(
            "session %s round %d (%s): %s on %s",
            session.id,
            round_.index,
            round_.id,
            "resuming" if lost is not None else "running",
            ", ".join(s.combiner.id for s in shares),
        )
        optimizer = make_server_optimizer(session.strategy, session.strategy_config)
        plan = self._planner.plan(session, optimizer, round_id=round_.id, index=round_.index)
        timeout_s = self._planner.call_timeout_s(session)
        results: list[RoundResult] = []
        failures: list[ClientFailureRecord] = list(lost or [])
        partials = self._merger.folder(session.model_id)
        used: list[RoundResult] = []
        # The merge waits for the slowest combiner; what can be done before (reading and folding the
        # other partials, reading the current global model) is done while it works, one partial at a
        # time, so the reducer holds one partial, not one per combiner, and the merge only stores.
        with ThreadPoolExecutor(max_workers=len(shares) + 1, thread_name_prefix="run-round") as pool:
            previous = pool.submit(self._merger.load_global, session)
            futures = [
                (s, pool.submit(self._round_at, s.combiner, Planner.for_share(plan, s), timeout_s, partials))
                for s in shares
            ]
            for share, future in futures:
                combiner_id = share.combiner.id
                try:
                    result, unusable = future.result()
                except FednError as exc:  # whatever status the combiner gave: its failure, not the round's
                    logger.warning("round %s: %s", round_.id, exc.message)
                    failures.extend(_clients_lost(share, Planner.for_share(plan, share), exc.message))
                    continue
                results.append(result)
                failures.extend(result.failures)
                if unusable:
                    logger.warning("round %s: combiner %s: %s", round_.id, combiner_id, unusable)
                    failures.append(ClientFailureRecord(client_id="", combiner_id=combiner_id, error=unusable))
                elif result.partial_key:
                    used.append(result)
        for result in stored:  # combiners that did not come back: their partials, as they stored them
            results.append(result)
            failures.extend(result.failures)
            if unusable := partials.fold(result):
                logger.warning("round %s: combiner %s: stored %s", round_.id, result.combiner_id, unusable)
                failures.append(ClientFailureRecord(client_id="", combiner_id=result.combiner_id, error=unusable))
            else:
                used.append(result)
                merged = [*round_.merged_from_store, result.combiner_id]
                round_ = round_.model_copy(update={"merged_from_store": merged})
        if self._stop.is_set():
            return session

        num_updates = sum(r.num_updates for r in used)
        round_ = round_.model_copy(
            update={
                "num_selected": sum(r.num_selected for r in results),
                "num_updates": num_updates,
                "num_rejected": sum(r.num_rejected for r in results),
                "total_weight": sum(r.total_weight for r in used),
                "uplink_bytes": sum(r.uplink_bytes for r in used),
                "failures": bound_failures(failures),
                "metrics": bound_metrics(merge_metric_summaries((r.metrics, r.total_weight) for r in used), used),
            }
        )
        if num_updates < session.min_clients:
            reason = f"{num_updates} updates arrived, min_clients is {session.min_clients}"
            if failures:
                reason += "; " + "; ".join(f"{f.client_id or f.combiner_id}: {f.error}" for f in round_.failures[:5])
            if not last_attempt:
                logger.warning(
                    "session %s round %d (%s): %s; running it again", session.id, round_.index, round_.id, reason
                )
                self._merger.fail_round(round_, reason, started)
                return session
            return self._merger.fail(session, reason, round_=round_, started=started)

        self._state.put_round(round_)  # its results, before the end: a restart that completes it keeps them
        merged = partials.merge.finish()
        try:
            current = previous.result()
        except FednError:
            current = None  # the merger reads it again, and reports the error if it persists
        try:
            return self._merger.apply(
                session, round_, merged.arrays, optimizer, started=started, num_partials=len(used), previous=current
            )
        except MergeRefused as exc:  # no other attempt would merge into a model that is finite and intact
            return self._merger.fail(session, exc.message, round_=round_, started=started)

    def _round_at(
        self, combiner: CombinerRecord, plan: RoundPlan, timeout_s: float, partials: PartialFolder
    ) -> tuple[RoundResult, str]:
        """Run ``plan`` at one combiner and fold its partial in as soon as it is stored; returns the
        combiner's result and why its partial could not be used ("" if it was, or if it had none)."""
        result = self._gateway.run_round(combiner, plan, timeout_s)
        self._merger.check_result(result, round_id=plan.round_id, combiner_id=combiner.id)  # before its partial is read
        return result, partials.fold(result) if result.partial_key else ""

    def _resume(
        self, session: Session, round_: Round
    ) -> tuple[list[Share], list[ClientFailureRecord] | None, list[RoundResult]]:
        """For a round a previous reducer left running on some combiners: wait (bounded) for them to be
        back, and return their shares, the results stored with the partials of those that did not come
        back (merged as if they had answered), and a failure for each of the others. ``([], None, [])``
        if the round was not running, or nothing of it is left (it is planned afresh)."""
        if round_.status != RoundStatus.RUNNING or not round_.combiners:
            return [], None, []
        shares, absent = self._planner.wait_for_combiners(session, round_.combiners)
        lost, stored = [], []
        for combiner_id in absent:
            error = f"combiner {combiner_id} did not come back within {self._planner.resume_wait_s(session):.0f}s"
            try:
                result = stored_result(self._models, round_.id, combiner_id)
                if result is not None:
                    self._merger.check_result(result, round_id=round_.id, combiner_id=combiner_id)
            except FednError as exc:  # unreadable, or not a description of that partial: not merged
                result, error = None, f"{error}; its stored partial is not used: {exc.message}"
            if result is not None:
                logger.info("round %s: %s; merging the partial it stored", round_.id, error)
                stored.append(result)
                continue
            logger.warning("round %s: %s", round_.id, error)
            lost.append(ClientFailureRecord(client_id="", combiner_id=combiner_id, error=f"combiner failed: {error}"))
        if not shares and not stored:
            return [], None, []
        return shares, lost, stored


def _clients_lost(share: Share, plan: RoundPlan, error: str) -> list[ClientFailureRecord]:
    """A combiner whose call failed: its own failure, then one for each client it held at its last
    heartbeat before the round, since what it asked of them is lost with it. Which of them it asked is
    not known here (its stragglers' back-off chooses too), so when its share was smaller than its
    clients each error says the client may not have been selected."""
    combiner_id = share.combiner.id
    held = sorted(share.client_ids)
    note = "client of that combiner"
    if 0 < plan.max_clients < len(held):
        note += f"; it was to select {plan.max_clients} of its {len(held)} clients, so this one may not have been"
    return [ClientFailureRecord(client_id="", combiner_id=combiner_id, error=error)] + [
        ClientFailureRecord(client_id=c, combiner_id=combiner_id, error=f"combiner failed: {error} ({note})")
        for c in held
    ]
