"""Evaluation-only sessions (``fedn session evaluate --model ID``): one round in which the selected
clients evaluate a stored model; nothing trains, no model is made.

The round is written before the combiners are asked; it ends ``done`` with the federated figures in
``Round.evaluation``, or the session fails when no client evaluated the model. A reducer that restarts
during it asks again (the combiners join the evaluation still running, or start it afresh: an
evaluation has no partial to lose).
"""

from __future__ import annotations

import logging
import threading

from fedn.records import Round, RoundStatus, Session, now
from fedn.store.base import StateStore
from reducer.evaluation import FederatedEvaluator
from reducer.merging import Merger

__all__ = ["EvalSession"]

logger = logging.getLogger(__name__)


class EvalSession:
    def __init__(self, state: StateStore, evaluator: FederatedEvaluator, merger: Merger, halt: threading.Event) -> None:
        self._state = state
        self._evaluator = evaluator
        self._merger = merger
        self._halt = halt

    def run(self, session: Session) -> Session:
        """Evaluate ``session.model_id`` once; returns the session advanced, failed, or as it was if halted."""
        rounds = [r for r in self._state.list_rounds(session.id) if r.status != RoundStatus.FAILED]
        round_ = rounds[0] if rounds else Round(session_id=session.id, index=1, model_in=session.model_id)
        if reason := self._evaluator.wait_for_clients(session):
            return self._merger.fail(session, reason, round_=round_)
        if self._halt.is_set():
            return session
        started = now()
        round_ = round_.model_copy(update={"status": RoundStatus.RUNNING, "started_at": started})
        self._state.put_round(round_)
        evaluation = self._evaluator.evaluate(session, round_, session.model_id, eval_id=round_.id)
        if self._halt.is_set():
            return session
        if evaluation.num_clients == 0:
            errors = "; ".join(f"{f.client_id or f.combiner_id}: {f.error}" for f in evaluation.failures[:5])
            reason = "no client evaluated the model" + (f": {errors}" if errors else "")
            round_ = round_.model_copy(update={"evaluation": evaluation})
            return self._merger.fail(session, reason, round_=round_)
        finished = now()
        round_ = round_.model_copy(
            update={
                "status": RoundStatus.DONE,
                "evaluation": evaluation,
                "num_selected": evaluation.num_selected,
                "finished_at": finished,
                "duration_s": finished - started,
            }
        )
        self._state.put_round(round_)
        session = session.model_copy(update={"rounds_done": 1, "updated_at": now()})
        self._state.put_session(session)
        return session
