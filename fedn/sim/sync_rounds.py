"""Synchronous rounds in the simulator, merged in two steps exactly as a deployment merges them.

Each round the reducer's split and each combiner's draw pick the clients, the seed decides who drops
out, the pool trains the rest on the published global model, and what comes back is merged twice:
the worker partials of each combiner group into that group's partial (the combiner's weighted mean),
then the group partials and the server optimizer step (the reducer's code). When an evaluation is
due, the same clients then evaluate the new model (:mod:`fedn.sim.evaluation`).
"""

from __future__ import annotations

import time

from fedn.aggregation import cast_like, merge_metric_summaries, merge_partials
from fedn.codec import NamedArrays
from fedn.errors import FednError
from fedn.sampling import seeded_uniforms
from fedn.sim.context import RunContext
from fedn.sim.evaluation import evaluate_on_clients
from fedn.sim.pool import TrainBatch
from fedn.sim.results import RoundMetrics
from fedn.sim.spec import round_sample
from fedn.sim.worker import Task

__all__ = ["run_sync_rounds"]


def run_sync_rounds(ctx: RunContext, model: NamedArrays) -> NamedArrays:
    """Play ``spec.rounds`` rounds from ``model`` into ``ctx.log``; returns the last global model.

    FednError if round 1 got no update and some client failed: a client class that cannot train.
    """
    spec = ctx.spec
    for r in range(1, spec.rounds + 1):
        started = time.perf_counter()
        ctx.pool.publish(model)
        selected = round_sample(spec, r)
        tasks, dropped = _show_up(ctx, r, selected)
        batch = ctx.pool.train(tasks, round_index=r, config=ctx.client_config(), on_progress=ctx.on_progress)
        row: RoundMetrics = {
            "round": r,
            "selected": sum(len(s) for s in selected),
            "dropped": dropped,
            "stragglers": batch.stragglers,
            "failed": len(batch.failures),
        }
        ctx.log.add_failures(r, batch.failures)
        partials = list(batch.partials.values())
        row["updates"] = sum(p.count for p in partials)
        if row["updates"] >= spec.min_clients:
            merged = merge_partials(partials)
            model = cast_like(ctx.optimizer.step(model, merged.arrays), model)
            summaries = [s for group in sorted(batch.summaries) for s in batch.summaries[group]]
            train = merge_metric_summaries(summaries)
            if "train_loss" in train:
                row["train_loss"] = train["train_loss"].mean
            row["status"] = "done"
        else:
            row["status"] = "failed"
            if r == 1 and row["updates"] == 0 and ctx.log.failures:
                raise FednError(f"round 1: no client produced an update; first error: {ctx.log.failures[0][2]}")
        row["modelled_s"] = _modelled_round_s(ctx, batch)
        if row["status"] == "done" and spec.federated_eval and ctx.log.evaluation_due(r):
            # the clients asked to train this round (those that showed up) evaluate its model, as the
            # deployment's evaluation plan draws with the round's seed
            row.update(evaluate_on_clients(ctx, model, r, tasks))
        ctx.log.record(row, model, started=started)
    return model


def _show_up(ctx: RunContext, round_index: int, selected: list[list[int]]) -> tuple[list[Task], int]:
    """The tasks of the selected clients that show up, and how many did not.

    Client ``c``'s draw is the ``c``-th uniform of the round's stream (:func:`seeded_uniforms`), drawn
    only for the selected clients and only when some client is flaky: O(sampled), not O(declared).
    """
    spec, dropout, slowdown = ctx.spec, ctx.dropout, ctx.slowdown
    draws: dict[int, float] = {}
    if dropout.any():
        everyone = sorted(cid for ids in selected for cid in ids)
        uniforms = seeded_uniforms([spec.seed, round_index, 2], everyone, spec.clients)
        draws = dict(zip(everyone, uniforms.tolist(), strict=True))
    tasks: list[Task] = []
    dropped = 0
    for group, ids in enumerate(selected):
        for cid in ids:
            if draws and draws[cid] < dropout[cid]:
                dropped += 1
            else:
                tasks.append((cid, group, slowdown[cid]))
    return tasks, dropped


def _modelled_round_s(ctx: RunContext, batch: TrainBatch) -> float:
    deadline = ctx.spec.heterogeneity.deadline_s
    return float(deadline) if batch.stragglers and deadline is not None else batch.slowest_s
