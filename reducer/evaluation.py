"""Federated evaluation: the selected clients evaluate a global model on their own held-out data.

The reducer sends every combiner with clients an evaluation plan (``mode=evaluate``); each combiner
sends its selected clients an evaluate task and returns the example-weighted summaries of what they
reported (``loss`` among them), exactly as it returns a partial's metrics; the reducer merges the
summaries weighted by each combiner's examples. The round record keeps the result as
``Round.evaluation``, with each client's own figures (bounded) for the admins.

An evaluation never decides a session's fate: a combiner that fails, or clients that do not answer,
are listed as failures of the evaluation; the trained model and the round stay as they are.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from fedn.aggregation import merge_metric_summaries
from fedn.clock import Clock
from fedn.errors import FednError
from fedn.records import (
    ClientEvaluation,
    ClientFailureRecord,
    Evaluation,
    Round,
    RoundPlan,
    RoundResult,
    Session,
    SessionMode,
)
from fedn.sampling import sample_seed
from fedn.store.base import StateStore
from fedn.wire_limits import MAX_CLIENT_EVALUATIONS
from reducer.gateway import CombinerGateway
from reducer.merging import Merger
from reducer.planning import Planner
from reducer.results import ResultRefused, bound_failures, bound_metrics

__all__ = ["MAX_CLIENT_EVALUATIONS", "FederatedEvaluator", "evaluation_due"]

logger = logging.getLogger(__name__)


def evaluation_due(session: Session, index: int) -> bool:
    """Is the model made by round ``index`` evaluated (:meth:`fedn.records.Session.evaluates`)?"""
    return session.evaluates(index)


def evaluation_round_id(round_id: str) -> str:
    """The id of the evaluation that follows round ``round_id``: the combiners route by it."""
    return f"{round_id}-eval"


class FederatedEvaluator:
    """Runs one evaluation of a model across the live combiners, on the calling thread."""

    def __init__(
        self, state: StateStore, gateway: CombinerGateway, planner: Planner, merger: Merger, clock: Clock
    ) -> None:
        self._state = state
        self._gateway = gateway
        self._planner = planner
        self._merger = merger
        self._clock = clock

    def wait_for_clients(self, session: Session) -> str:
        """As a training round waits: why the session cannot go on ("" if it can, or if it was halted)."""
        return self._planner.wait_for_clients(session)

    def plan(self, session: Session, round_: Round, model_id: str, eval_id: str) -> RoundPlan:
        return RoundPlan(
            round_id=eval_id,
            session_id=session.id,
            round_index=round_.index,
            model_id=model_id,
            config=dict(session.config),
            timeout_s=session.round_timeout_s,
            sample_seed=sample_seed(session.seed, round_.index),
            mode=SessionMode.EVALUATE,
            model_sha256=self._state.get_model(model_id).sha256,
        )

    def evaluate(self, session: Session, round_: Round, model_id: str, *, eval_id: str | None = None) -> Evaluation:
        """Evaluate ``model_id`` on the clients the session's ``fraction`` selects; never raises a
        combiner's failure (it is one of the evaluation's failures)."""
        started = self._clock.now()
        eval_id = eval_id or evaluation_round_id(round_.id)
        shares = self._planner.shares(session)
        plan = self.plan(session, round_, model_id, eval_id)
        timeout_s = self._planner.call_timeout_s(session)
        results: list[RoundResult] = []
        failures: list[ClientFailureRecord] = []
        if shares:
            with ThreadPoolExecutor(max_workers=len(shares), thread_name_prefix="evaluate") as pool:
                futures = [
                    (s, pool.submit(self._gateway.run_round, s.combiner, Planner.for_share(plan, s), timeout_s))
                    for s in shares
                ]
                for share, future in futures:
                    try:
                        result = self._merger.check_result(
                            future.result(), round_id=eval_id, combiner_id=share.combiner.id
                        )
                        _check_evaluations(result)
                    except FednError as exc:
                        logger.warning("evaluation %s: %s", eval_id, exc.message)
                        failures.append(
                            ClientFailureRecord(combiner_id=share.combiner.id, client_id="", error=exc.message)
                        )
                        continue
                    results.append(result)
                    failures.extend(result.failures)
        answered = [r for r in results if r.num_updates > 0]
        per_client: list[ClientEvaluation] = [e for r in answered for e in r.evaluations][:MAX_CLIENT_EVALUATIONS]
        evaluation = Evaluation(
            model_id=model_id,
            num_selected=sum(r.num_selected for r in results),
            num_clients=sum(r.num_updates for r in answered),
            num_examples=sum(r.total_weight for r in answered),
            metrics=bound_metrics(merge_metric_summaries((r.metrics, r.total_weight) for r in answered), answered),
            failures=bound_failures(failures),
            per_client=per_client,
            duration_s=self._clock.now() - started,
        )
        loss = evaluation.metrics.get("loss")
        accuracy = evaluation.metrics.get("accuracy")
        logger.info(
            "session %s round %d: evaluated model %s on %d clients (%g examples): loss %s, accuracy %s, %.2fs",
            session.id,
            round_.index,
            model_id,
            evaluation.num_clients,
            evaluation.num_examples,
            f"{loss.mean:.4f}" if loss else "-",
            f"{accuracy.mean:.4f}" if accuracy else "-",
            evaluation.duration_s,
        )
        return evaluation

    def evaluate_round(self, session: Session, round_id: str, halt: threading.Event) -> None:
        """After round ``round_id`` is done: evaluate its model and keep the result in its record. A store
        error is logged, not raised: the round and the session are already where they should be."""
        try:
            round_ = self._state.get_round(round_id)
            if round_.model_out is None or halt.is_set():
                return
            evaluation = self.evaluate(session, round_, round_.model_out)
            if halt.is_set():  # stopped meanwhile: what arrived is not a full evaluation
                return
            self._state.put_round(self._state.get_round(round_id).model_copy(update={"evaluation": evaluation}))
        except FednError as exc:
            logger.warning("session %s: the evaluation of round %s is lost: %s", session.id, round_id, exc.message)


def _check_evaluations(result: RoundResult) -> None:
    """A combiner's per-client figures must be of clients it says answered, once each, and bounded."""
    ids = [e.client_id for e in result.evaluations]
    bound = min(result.num_updates, MAX_CLIENT_EVALUATIONS)
    if len(ids) != len(set(ids)) or not set(ids) <= set(result.client_ids) or len(ids) > bound:
        raise ResultRefused(
            f"combiner {result.combiner_id} returned {len(ids)} client evaluations for {result.num_updates} "
            "evaluations: not used"
        )
