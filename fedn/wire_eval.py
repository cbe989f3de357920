"""Evaluation and session-stop messages on the wire: a client's evaluation of a global model, each
client's figures in a combiner's result, and the reducer's request to abandon a round.

Everything read from the wire is checked here, as :mod:`fedn.wire` checks updates: ids match the id
pattern, loss and example counts are finite, metrics are bounded in number and name.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from fedn.errors import InvalidArgument
from fedn.ids import check_id, check_text
from fedn.records import ClientEvaluation
from fedn.v1 import fedn_pb2 as pb
from fedn.wire_limits import MAX_NAME_CHARS, check_metrics
from fedn.wire_limits import check_finite as _check_finite

__all__ = [
    "EvaluationReportInfo",
    "abandon_request_from_proto",
    "client_evaluations_from_proto",
    "client_evaluations_to_proto",
    "evaluation_report_from_proto",
    "evaluation_report_to_proto",
]


@dataclass(frozen=True)
class EvaluationReportInfo:
    """One client's evaluation of ``model_id`` in the evaluation round ``round_id``."""

    round_id: str
    client_id: str
    model_id: str
    loss: float
    num_examples: float
    metrics: dict[str, float] = field(default_factory=dict)


def evaluation_report_to_proto(info: EvaluationReportInfo) -> pb.EvaluationReport:
    return pb.EvaluationReport(
        round_id=info.round_id,
        client_id=info.client_id,
        model_id=info.model_id,
        loss=info.loss,
        num_examples=info.num_examples,
        metrics=dict(info.metrics),
    )


def _check_examples(value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise InvalidArgument(f"num_examples must be a positive finite number, got {value}")
    return float(value)


def evaluation_report_from_proto(msg: pb.EvaluationReport) -> EvaluationReportInfo:
    """A client's report: the loss must be finite (a NaN loss is the client's failure, reported as
    such, not a number to average), the example count positive; a NaN metric is left out."""
    return EvaluationReportInfo(
        round_id=check_id(msg.round_id, "round_id"),
        client_id=check_id(msg.client_id, "client_id"),
        model_id=check_id(msg.model_id, "model_id"),
        loss=_check_finite(msg.loss, "loss"),
        num_examples=_check_examples(msg.num_examples),
        metrics=check_metrics(msg.metrics),
    )


def client_evaluations_to_proto(evaluations: Iterable[ClientEvaluation]) -> list[pb.ClientEvaluation]:
    return [
        pb.ClientEvaluation(client_id=e.client_id, loss=e.loss, num_examples=e.num_examples, metrics=dict(e.metrics))
        for e in evaluations
    ]


def client_evaluations_from_proto(msgs: Iterable[pb.ClientEvaluation], combiner_id: str) -> list[ClientEvaluation]:
    """Each client's figures as a combiner relayed them, checked as the client's own report was."""
    return [
        ClientEvaluation(
            client_id=check_id(m.client_id, "client_id"),
            combiner_id=combiner_id,
            loss=_check_finite(m.loss, "loss"),
            num_examples=_check_examples(m.num_examples),
            metrics=check_metrics(m.metrics),
        )
        for m in msgs
    ]


def abandon_request_from_proto(msg: pb.AbandonRoundRequest) -> tuple[str, str, str]:
    """(round id or "" for whatever of the session runs, session id, reason): the reason is logged, so it
    is one bounded printable line."""
    return (
        check_id(msg.round_id, "round_id", optional=True),
        check_id(msg.session_id, "session_id"),
        check_text(msg.reason, "reason", MAX_NAME_CHARS),
    )
