"""An evaluation round at a combiner: the selected clients evaluate one global model on their own
held-out data, and the combiner aggregates their figures weighted by examples, as a sync round folds
updates; nothing trains and nothing is stored in the model store.

The round ends when every selected client answered (an evaluation, a reported failure, a disconnect)
or its deadline passed. Its result carries the weighted summaries (``loss`` among the metrics), the
total of examples as its weight, and each client's own figures for the admins.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from combiner.grants import GrantGate
from combiner.model_cache import CachedModel
from combiner.run import RoundMetrics, RunContext
from combiner.selected_round import SelectedRound
from fedn.errors import FailedPrecondition, InvalidArgument
from fedn.records import ClientEvaluation, ClientFailureRecord, RoundPlan, RoundResult
from fedn.wire import TaskInfo, UpdateHeaderInfo
from fedn.wire_eval import EvaluationReportInfo
from fedn.wire_limits import MAX_CLIENT_EVALUATIONS

__all__ = ["EvalRound"]

logger = logging.getLogger(__name__)


class EvalRound(SelectedRound):
    """One evaluation round on this combiner's clients; implements :class:`combiner.run.Run`."""

    _asks = "evaluate"

    def __init__(
        self,
        ctx: RunContext,
        plan: RoundPlan,
        model: CachedModel,
        selected: list[str],
        *,
        started_at: float | None = None,
        max_num_examples: float = 1e9,
    ) -> None:
        super().__init__(ctx, plan, selected, started_at)
        self._max_num_examples = max_num_examples
        self._metrics = RoundMetrics()
        self._evaluations: dict[str, ClientEvaluation] = {}  # the first MAX_CLIENT_EVALUATIONS clients' own
        self._count = 0  # evaluations folded, every client's
        self._weight = 0.0
        self._evaluated: list[str] = []
        self._task_info = TaskInfo(
            "evaluate", plan.round_id, plan.session_id, plan.model_id, plan.round_index, plan.timeout_s, plan.config
        )
        self._tasks: GrantGate = ctx.models.task_gate(model, lambda c: ctx.clients.send(c, self._task_info))

    @staticmethod
    def check_plan(plan: RoundPlan) -> None:
        if plan.timeout_s <= 0:
            raise InvalidArgument("round timeout must be positive")

    # -- clients -----------------------------------------------------------------

    def _answer(self, client_id: str, error: str | None = None) -> None:
        self._tasks.release(client_id)
        super()._answer(client_id, error)

    def evaluated(self, report: EvaluationReportInfo) -> int:
        """Fold one client's evaluation; returns how many arrived so far."""
        self._expect(report.client_id)
        if report.model_id != self.plan.model_id:
            raise InvalidArgument(
                f"evaluation of model {report.model_id!r}, but round {self.run_id!r} evaluates {self.plan.model_id!r}"
            )
        if report.num_examples > self._max_num_examples:  # as the stager bounds an update's weight
            problem = InvalidArgument(
                f"num_examples {report.num_examples:g} is over the limit {self._max_num_examples:g} (max_num_examples)"
            )
            self._tally.reject(report.client_id, problem)
            self._answer(report.client_id)
            raise problem
        self._metrics.add({"loss": report.loss, **report.metrics}, report.num_examples)
        self._count += 1
        self._weight += report.num_examples
        self._evaluated.append(report.client_id)
        if len(self._evaluations) < MAX_CLIENT_EVALUATIONS:
            self._evaluations[report.client_id] = ClientEvaluation(
                client_id=report.client_id,
                combiner_id=self._ctx.combiner_id,
                loss=report.loss,
                num_examples=report.num_examples,
                metrics=dict(report.metrics),
            )
        self._ctx.stragglers.delivered(report.client_id)
        self._answer(report.client_id)
        return self._count

    def admit(self, client_id: str) -> tuple[bool, int]:
        raise FailedPrecondition(f"round {self.run_id!r} is an evaluation round: it takes no updates")

    async def receive(self, header: UpdateHeaderInfo, chunks: AsyncIterator[bytes]) -> int:
        raise FailedPrecondition(f"round {self.run_id!r} is an evaluation round: it takes no updates")

    def report_failure(self, client_id: str, error: str) -> None:
        self._expect(client_id)
        logger.warning("client %s failed evaluation round %s: %s", client_id, self.plan.round_id, error)
        self._answer(client_id, error)

    def downloaded(self, model_id: str, client_id: str) -> None:
        if not self._closed and model_id == self.plan.model_id and client_id in self._selected:
            self._tasks.release(client_id)  # its download is done: the next client gets its task

    # -- the round ---------------------------------------------------------------

    async def _drive(self) -> RoundResult:
        plan, ctx = self.plan, self._ctx
        logger.info(
            "evaluation round %s (session %s, #%d) of model %s started on %s with %d clients",
            plan.round_id,
            plan.session_id,
            plan.round_index,
            plan.model_id,
            ctx.combiner_id,
            len(self._selected),
        )
        try:
            for client_id in sorted(self._selected):
                if self._tasks.request(client_id):
                    ctx.clients.send(client_id, self._task_info)
            with contextlib.suppress(TimeoutError):
                remaining = self._started_at + plan.timeout_s - ctx.clock.now()
                await ctx.clock.wait_for(self._all_answered.wait(), remaining)
        finally:
            self._closed = True
            self._tasks.close()
        for client_id in sorted(self._selected - self._answered):
            self._tally.fail(client_id, f"no evaluation within the round deadline ({plan.timeout_s:g}s)")
        count = 0 if self._discard else self._count
        evaluations = [self._evaluations[c] for c in sorted(self._evaluations)] if count else []
        result = RoundResult(
            round_id=plan.round_id,
            combiner_id=ctx.combiner_id,
            total_weight=self._weight if count else 0.0,
            num_selected=len(self._selected),
            num_updates=count,
            num_rejected=self._tally.num_rejected,
            failures=[
                ClientFailureRecord(client_id=c, combiner_id=ctx.combiner_id, error=e)
                for c, e in sorted(self._tally.failures.items())
            ],
            metrics=self._metrics.summary() if count else {},
            client_ids=list(self._evaluated) if count else [],
            evaluations=evaluations,
        )
        logger.info(
            "evaluation round %s ended on %s: %d/%d evaluations, %d failed, %.2fs",
            plan.round_id,
            ctx.combiner_id,
            result.num_updates,
            result.num_selected,
            len(result.failures),
            ctx.clock.now() - self._started_at,
        )
        return result
