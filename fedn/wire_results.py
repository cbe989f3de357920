"""Protobuf <-> domain conversion of a combiner's round result (re-exported by :mod:`fedn.wire`)."""

from __future__ import annotations

from fedn.records import ClientFailureRecord, MetricSummary, RoundResult
from fedn.v1 import fedn_pb2 as pb
from fedn.wire_eval import client_evaluations_from_proto, client_evaluations_to_proto
from fedn.wire_limits import check_count, check_metric_summaries

__all__ = ["round_result_from_proto", "round_result_to_proto"]


def round_result_to_proto(result: RoundResult) -> pb.RoundResult:
    return pb.RoundResult(
        round_id=result.round_id,
        combiner_id=result.combiner_id,
        partial_key=result.partial_key,
        total_weight=result.total_weight,
        num_selected=result.num_selected,
        num_updates=result.num_updates,
        num_rejected=result.num_rejected,
        failures=[pb.ClientFailure(client_id=f.client_id, error=f.error) for f in result.failures],
        metrics={
            k: pb.MetricSummary(mean=m.mean, min=m.min, max=m.max, count=m.count, weight=m.weight)
            for k, m in result.metrics.items()
        },
        client_ids=list(result.client_ids),
        evaluations=client_evaluations_to_proto(result.evaluations),
        uplink_bytes=result.uplink_bytes,
    )


def round_result_from_proto(msg: pb.RoundResult) -> RoundResult:
    """A combiner's result; its metric summaries bounded as an update's metrics are."""
    return RoundResult(
        round_id=msg.round_id,
        combiner_id=msg.combiner_id,
        partial_key=msg.partial_key,
        total_weight=msg.total_weight,
        num_selected=msg.num_selected,
        num_updates=msg.num_updates,
        num_rejected=msg.num_rejected,
        failures=[
            ClientFailureRecord(client_id=f.client_id, combiner_id=msg.combiner_id, error=f.error) for f in msg.failures
        ],
        metrics=check_metric_summaries(
            {
                k: MetricSummary(mean=m.mean, min=m.min, max=m.max, count=m.count, weight=m.weight)
                for k, m in msg.metrics.items()
            }
        ),
        client_ids=list(msg.client_ids),
        evaluations=client_evaluations_from_proto(msg.evaluations, msg.combiner_id),
        uplink_bytes=check_count(msg.uplink_bytes, "uplink_bytes"),
    )
