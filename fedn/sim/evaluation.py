"""Federated evaluation in the simulator: clients evaluate a global model on their own held-out data.

It is the deployment's evaluation with the transport replaced. The workers run the clients'
``evaluate`` and send back each client's checked figures (a few numbers, no arrays); the driver
folds each combiner group's ``{"loss": loss, **metrics}`` weighted by ``num_examples`` into one
:class:`~fedn.aggregation.MetricsAccumulator` (a combiner's ``RoundMetrics``), then merges the groups'
summaries weighted by their examples (the reducer's :func:`~fedn.aggregation.merge_metric_summaries`).
A client whose ``evaluate`` raises or fails :func:`~fedn.train_result.check_evaluate_result` is a
failure of the evaluation, listed with the run's failures; the run goes on.

When, as :meth:`fedn.records.Session.evaluates`: after every ``eval_every`` sync rounds and the last
(a round that failed made no new model and is not evaluated); in an async run, the final version.
Which clients: in a sync round, the clients the round asked to train (its sample, less those that
dropped out), as the deployment's evaluation plan draws with the round's seed from the same
clients. An async run has no round sample, so its final version is evaluated on the sample a sync
round of that index would draw (``fraction`` of all clients, split over the groups).
"""

from __future__ import annotations

import time

from fedn.aggregation import MetricsAccumulator, merge_metric_summaries
from fedn.codec import NamedArrays
from fedn.records import ClientEvaluation
from fedn.sim.context import RunContext
from fedn.sim.results import RoundMetrics
from fedn.sim.spec import round_sample
from fedn.sim.worker import Task

__all__ = ["evaluate_on_clients", "evaluate_on_sample"]


def evaluate_on_clients(ctx: RunContext, model: NamedArrays, index: int, tasks: list[Task]) -> RoundMetrics:
    """Have the clients of ``tasks`` evaluate ``model`` (the one made by round or version ``index``).

    Returns the row's federated figures: ``eval_loss`` and ``eval_<metric>`` (example-weighted means,
    absent when no client evaluated), ``eval_clients`` (evaluations that counted), ``eval_failed`` and
    ``eval_wall_s``. The failures go to ``ctx.log``, the clients' own figures to ``ctx.log``.
    """
    started = time.perf_counter()
    ctx.pool.publish(model)
    batch = ctx.pool.evaluate(tasks, round_index=index, config=dict(ctx.spec.config), on_progress=ctx.on_progress)
    ctx.log.add_failures(index, batch.failures)
    folded: dict[int, MetricsAccumulator] = {}
    examples: dict[int, float] = {}
    for _cid, group, loss, n, metrics in batch.evaluations:
        folded.setdefault(group, MetricsAccumulator()).add({"loss": loss, **metrics}, n)
        examples[group] = examples.get(group, 0.0) + n
    merged = merge_metric_summaries((folded[g].summary(), examples[g]) for g in sorted(folded))
    names = sorted(merged, key=lambda name: (name != "loss", name))  # loss first, as in the central columns
    row: RoundMetrics = {f"eval_{name}": merged[name].mean for name in names}
    row["eval_clients"] = len(batch.evaluations)
    row["eval_failed"] = len(batch.failures)
    row["eval_wall_s"] = time.perf_counter() - started
    ctx.log.keep_evaluations(
        [
            ClientEvaluation(
                client_id=str(cid), combiner_id=f"group-{group}", loss=loss, num_examples=n, metrics=dict(metrics)
            )
            for cid, group, loss, n, metrics in batch.evaluations
        ]
    )
    return row


def evaluate_on_sample(ctx: RunContext, model: NamedArrays, index: int) -> RoundMetrics:
    """:func:`evaluate_on_clients` on the clients a round ``index`` samples (an async run's versions)."""
    tasks: list[Task] = [
        (cid, group, float(ctx.slowdown[cid])) for group, ids in enumerate(round_sample(ctx.spec, index)) for cid in ids
    ]
    return evaluate_on_clients(ctx, model, index, tasks)
