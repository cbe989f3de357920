"""``GET /metrics`` for Prometheus, and the count of HTTP requests by route template and status.

The route's roles (admin, viewer) are checked by the one auth hook like any route's; Prometheus sends
its token as ``Authorization: Bearer`` (docs/operations.md). Gauges of current state (combiners,
clients, sessions by status) are read when scraped, so nothing has to keep them up to date.
"""

from __future__ import annotations

import logging
import re

from flask import Blueprint, Flask, Response, request

from fedn.errors import FednError
from fedn.metrics import CONTENT_TYPE_LATEST, ReducerMetrics, exposition
from fedn.records import SessionStatus
from fedn.store.base import StateStore
from reducer.registry import CombinerRegistry

__all__ = ["create_metrics_api", "install_http_metrics"]

logger = logging.getLogger(__name__)

_MAX_SESSIONS_SCANNED = 10_000  # a scrape reads at most this many sessions (newest pages first)
_PAGE = 500
_RULE_ARG = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


def create_metrics_api(state: StateStore, registry: CombinerRegistry, metrics: ReducerMetrics) -> Blueprint:
    api = Blueprint("metrics", __name__)

    @api.get("/metrics")
    def scrape() -> Response:
        metrics.combiners_online.set(len(registry.live()))
        metrics.clients_connected.set(registry.clients_online())
        _count_sessions(state, metrics)
        return Response(exposition(metrics.registry), mimetype=None, content_type=CONTENT_TYPE_LATEST)

    return api


def _count_sessions(state: StateStore, metrics: ReducerMetrics) -> None:
    counts = dict.fromkeys(SessionStatus, 0)
    try:
        for offset in range(0, _MAX_SESSIONS_SCANNED, _PAGE):
            page = state.list_sessions(limit=_PAGE, offset=offset)
            for session in page:
                counts[session.status] = counts.get(session.status, 0) + 1
            if len(page) < _PAGE:
                break
    except FednError as exc:  # the scrape still answers; the gauges keep their last values
        logger.warning("metrics: cannot count sessions: %s", exc.message)
        return
    for status, count in counts.items():
        metrics.sessions.labels(str(status)).set(count)


def install_http_metrics(app: Flask, metrics: ReducerMetrics) -> None:
    """Count every answered request by method, route template (``unmatched`` for a 404) and status."""

    @app.after_request
    def count(response: Response) -> Response:
        rule = request.url_rule
        route = _RULE_ARG.sub(r"{\1}", rule.rule) if rule is not None else "unmatched"
        method = request.method if request.method in _METHODS else "OTHER"
        metrics.http_requests.labels(method, route, str(response.status_code)).inc()
        return response


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
