"""A simulation's results: one row per sync round or async version, the first failures, the final model.

Sync rounds and async runs build their own rows, since they count different things (and the federated
evaluation's ``eval_*`` figures, :mod:`fedn.sim.evaluation`), and hand them to one :class:`ResultLog`,
which adds the central evaluation when it is due and stamps time and memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fedn.codec import NamedArrays
from fedn.records import ClientEvaluation
from fedn.sim.memory import RssSampler
from fedn.sim.spec import SimulationSpec

__all__ = ["MAX_FAILURES", "ResultLog", "RoundMetrics", "SimulationResult"]

RoundMetrics = dict[str, Any]
MAX_FAILURES = 20  # failures kept for the report; the rows count all of them


@dataclass
class SimulationResult:
    rounds: list[RoundMetrics]
    model: NamedArrays
    wall_s: float
    peak_rss_mb: float
    failures: list[tuple[int, int, str]] = field(default_factory=list)  # (round or version, client, error)
    # the clients' own figures in the last federated evaluation (client_id is the client's index)
    evaluations: list[ClientEvaluation] = field(default_factory=list)

    # bytes over the whole run: updates sent (``uplink_bytes``, per update ``uplink_bytes_per_client``)
    # and models received (``downlink_bytes``); compressed sizes with compression, raw ones without
    traffic: dict[str, float] = field(default_factory=dict)


class ResultLog:
    """Collects the rows and the first failures of a run, evaluating the global model centrally on the way.

    ``evaluator`` is a client instance on held-out data (None: no central evaluation); it is asked when
    :meth:`evaluation_due`. ``on_round`` gets each finished row. ``evaluations`` holds the clients' own
    figures of the last federated evaluation (only the last: memory stays flat over rounds).
    """

    def __init__(
        self,
        *,
        spec: SimulationSpec,
        evaluator: Any | None,
        rss: RssSampler,
        on_round: Callable[[RoundMetrics], None] | None = None,
    ) -> None:
        self.spec = spec
        self.evaluator = evaluator
        self.rss = rss
        self.on_round = on_round
        self.rows: list[RoundMetrics] = []
        self.failures: list[tuple[int, int, str]] = []
        self.evaluations: list[ClientEvaluation] = []
        self._traffic: dict[str, int] | None = None  # bytes since the last row, once a batch was counted
        self._total = {"uplink_bytes": 0, "uploads": 0, "downlink_bytes": 0}

    def count_traffic(self, uplink_bytes: int, uploads: int, downlink_bytes: int) -> None:
        """Add a training batch's bytes (the updates sent, compressed or raw, and the models received) to
        the next row's ``uplink_bytes``, ``uplink_bytes_per_client`` and ``downlink_bytes``."""
        traffic = self._traffic or {"uplink_bytes": 0, "uploads": 0, "downlink_bytes": 0}
        for counts in (traffic, self._total):
            counts["uplink_bytes"] += uplink_bytes
            counts["uploads"] += uploads
            counts["downlink_bytes"] += downlink_bytes
        self._traffic = traffic

    def traffic(self) -> dict[str, float]:
        """The run's bytes so far, in the rows' three columns."""
        return _traffic_columns(self._total)

    def keep_evaluations(self, evaluations: list[ClientEvaluation]) -> None:
        """Keep the clients' own figures of the newest federated evaluation, in place of the previous ones."""
        self.evaluations = evaluations

    def evaluation_due(self, index: int) -> bool:
        """Is the model of round or version ``index`` evaluated: every ``eval_every`` and the last."""
        return index % self.spec.eval_every == 0 or index == self.spec.rounds

    def add_failures(self, index: int, failures: list[tuple[int, str]]) -> None:
        """Keep ``(client, error)`` of round or version ``index`` while fewer than MAX_FAILURES are kept."""
        room = max(0, MAX_FAILURES - len(self.failures))
        self.failures.extend((index, cid, err) for cid, err in failures[:room])

    def record(self, row: RoundMetrics, model: NamedArrays, *, started: float) -> None:
        """Finish ``row`` (round or version ``row["round"]``, begun at perf_counter ``started``) with the
        evaluation of ``model`` when due, its wall time and the memory in use, and keep it."""
        index = row["round"]
        if self.evaluator is not None and self.evaluation_due(index):
            row.update(self.evaluate(model, index))
        if self._traffic is not None:
            row.update(_traffic_columns(self._traffic))
            self._traffic = None
        row["wall_s"] = time.perf_counter() - started
        row["rss_mb"] = self.rss.current_mb()
        self.rows.append(row)
        if self.on_round is not None:
            self.on_round(row)

    def evaluate(self, model: NamedArrays, index: int) -> dict[str, float]:
        """The evaluator's loss and metrics on a copy of ``model`` (a client may write to its parameters)."""
        loss, _n, metrics = self.evaluator.evaluate(
            {k: a.copy() for k, a in model.items()}, {**self.spec.config, "round": index}
        )
        out = {"loss": float(loss)}
        out.update({str(k): float(v) for k, v in metrics.items()})
        return out


def _traffic_columns(counts: dict[str, int]) -> dict[str, float]:
    return {
        "uplink_bytes": counts["uplink_bytes"],
        "uplink_bytes_per_client": counts["uplink_bytes"] / max(counts["uploads"], 1),
        "downlink_bytes": counts["downlink_bytes"],
    }
