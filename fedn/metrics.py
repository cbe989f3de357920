"""Prometheus metrics of the reducer and the combiners: one set per service, in its own registry.

Every label value comes from a fixed set (outcomes, modes, reasons, route templates, status codes),
never from a client or session id, so the memory of a registry does not grow with the federation.
A combiner is given its :class:`CombinerMetrics` by its server; the reducer's pieces share one
:class:`ReducerMetrics` per process (:func:`reducer_metrics`), which a test may replace by passing its own.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from fedn.errors import ChecksumMismatch, FednError, InvalidArgument, InvalidModel, NonFiniteValues, PayloadTooLarge
from fedn.metrics_grpc import RpcMetrics

__all__ = [
    "CONTENT_TYPE_LATEST",
    "REJECT_REASONS",
    "CombinerMetrics",
    "ReducerMetrics",
    "exposition",
    "reducer_metrics",
    "reject_reason",
]

# Why an update was refused by its own fault; the order is the check order, most specific class first.
REJECT_REASONS: tuple[str, ...] = ("too_large", "checksum", "non_finite", "invalid_model", "invalid_argument", "other")
_REASON_OF: tuple[tuple[type[FednError], str], ...] = (
    (PayloadTooLarge, "too_large"),
    (ChecksumMismatch, "checksum"),
    (NonFiniteValues, "non_finite"),
    (InvalidModel, "invalid_model"),
    (InvalidArgument, "invalid_argument"),
)
ROUND_OUTCOMES: tuple[str, ...] = ("done", "failed")
SESSION_MODES: tuple[str, ...] = ("sync", "async")

# Seconds: from a small model's fold (milliseconds) to a long round (an hour).
_FOLD_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_ROUND_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


def _combiner_methods() -> list[str]:
    """The Combiner service's RPC names, from the protocol itself (the only method labels there are)."""
    from fedn.v1 import fedn_pb2

    return [m.name for m in fedn_pb2.DESCRIPTOR.services_by_name["Combiner"].methods]


def reject_reason(exc: BaseException) -> str:
    """The fixed reason label of an update refused with ``exc``."""
    for cls, reason in _REASON_OF:
        if isinstance(exc, cls):
            return reason
    return "other"


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry in Prometheus' text format (``CONTENT_TYPE_LATEST``)."""
    return generate_latest(registry)


class CombinerMetrics:
    """One combiner's metrics. Counters and histograms are updated where things happen; the gauges of
    current state (clients, staged bytes, queues, cache) are read when scraped (``set_function``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.updates_accepted = Counter(
            "fedn_combiner_updates_accepted",
            "Updates folded into an aggregate (counted as each is folded)",
            registry=r,
        )
        self.updates_rejected = Counter(
            "fedn_combiner_updates_rejected", "Updates refused by their own fault, by reason", ["reason"], registry=r
        )
        for reason in REJECT_REASONS:
            self.updates_rejected.labels(reason)  # every reason present from the start, at 0
        self.update_bytes_received = Counter(
            "fedn_combiner_update_bytes_received", "Bytes of update payloads received from clients", registry=r
        )
        self.model_bytes_sent = Counter(
            "fedn_combiner_model_bytes_sent", "Bytes of model downloads sent to clients", registry=r
        )
        self.fold_seconds = Histogram(
            "fedn_combiner_fold_seconds",
            "Seconds from a staged update handed to its run until it is folded (waiting for the aggregate included)",
            buckets=_FOLD_BUCKETS,
            registry=r,
        )
        self.round_seconds = Histogram(
            "fedn_combiner_round_seconds",
            "Seconds from a run's start (an async run: its previous flush) to its result",
            buckets=_ROUND_BUCKETS,
            registry=r,
        )
        self.clients_connected = Gauge("fedn_combiner_clients_connected", "Open client task streams", registry=r)
        self.staged_bytes = Gauge(
            "fedn_combiner_staged_bytes", "Bytes of updates being received or folded (memory and spool)", registry=r
        )
        self.staged_updates = Gauge("fedn_combiner_staged_updates", "Updates being received or folded", registry=r)
        self.spooled_bytes = Gauge(
            "fedn_combiner_spooled_bytes", "Bytes of staged updates in temporary files (--spool-dir)", registry=r
        )
        self.upload_queue = Gauge(
            "fedn_combiner_upload_queue", "Clients waiting for an upload slot (all runs)", registry=r
        )
        self.model_cache_bytes = Gauge(
            "fedn_combiner_model_cache_bytes", "Bytes of global models held in memory for downloads", registry=r
        )
        self.model_cache_models = Gauge(
            "fedn_combiner_model_cache_models", "Global models known to the download cache", registry=r
        )
        self.rpcs = RpcMetrics(r, "fedn_combiner", _combiner_methods())


class ReducerMetrics:
    """The reducer's metrics. Rounds and merges are counted by :mod:`reducer.merging`; the gauges of
    current state (combiners, clients, sessions) are set from the registry and when scraped."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.rounds = Counter(
            "fedn_reducer_rounds",
            "Rounds (async: versions) that ended, by session mode and outcome",
            ["mode", "outcome"],
            registry=r,
        )
        for mode in SESSION_MODES:
            for outcome in ROUND_OUTCOMES:
                self.rounds.labels(mode, outcome)
        self.round_seconds = Histogram(
            "fedn_reducer_round_seconds",
            "Seconds from a round's start to its end, done or failed, by session mode",
            ["mode"],
            buckets=_ROUND_BUCKETS,
            registry=r,
        )
        self.merge_seconds = Histogram(
            "fedn_reducer_merge_seconds",
            "Seconds to fold one combiner's partial (sync) and to step, store and record a merge, by step",
            ["step"],
            buckets=_FOLD_BUCKETS,
            registry=r,
        )
        self.sessions = Gauge("fedn_reducer_sessions", "Sessions by status (when scraped)", ["status"], registry=r)
        self.combiners_online = Gauge("fedn_reducer_combiners_online", "Combiners heard from recently", registry=r)
        self.clients_connected = Gauge(
            "fedn_reducer_clients_connected", "Clients the combiners' heartbeats report connected", registry=r
        )
        self.http_requests = Counter(
            "fedn_reducer_http_requests",
            "HTTP requests by method, route template and status",
            ["method", "route", "status"],
            registry=r,
        )

    def round_ended(self, mode: str, outcome: str, seconds: float | None) -> None:
        """One round (or async version) ended; ``seconds`` is None when its start is not known."""
        mode = mode if mode in SESSION_MODES else "sync"
        self.rounds.labels(mode, outcome if outcome in ROUND_OUTCOMES else "failed").inc()
        if seconds is not None:
            self.round_seconds.labels(mode).observe(max(0.0, seconds))


_process_reducer: ReducerMetrics | None = None
_process_lock = threading.Lock()


def reducer_metrics() -> ReducerMetrics:
    """The reducer's metrics of this process: the merger, the registry and the /metrics route share them."""
    global _process_reducer
    with _process_lock:
        if _process_reducer is None:
            _process_reducer = ReducerMetrics()
        return _process_reducer
