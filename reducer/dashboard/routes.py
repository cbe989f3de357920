"""Routes of the dashboard: the page, its assets, and the live event stream.

The page and its assets hold no secrets and are open; the data comes from ``/api/v1`` with the viewer's
token, and ``/api/v1/events`` (roles admin and viewer) streams changes. Assets are files shipped in the
wheel (no CDN, no build step): the chart library is uPlot, vendored with its licence.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, request, send_from_directory

from fedn.errors import Unavailable
from reducer.events import EventHub, EventStream
from reducer.http_wsgi import ASYNC_BODY

__all__ = ["create_dashboard"]

STATIC = Path(__file__).parent / "static"

# Everything from the reducer itself: no inline script, no third-party origin (a page is not a CDN client).
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


def _secured(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = _CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-cache"
    return response


def create_dashboard(events: EventHub | None, *, keepalive_s: float = 15.0) -> Blueprint:
    """The blueprint; without ``events`` the stream route answers 503 and the page shows a stale view."""
    bp = Blueprint("dashboard", __name__)

    @bp.get("/")
    def index():
        return _secured(send_from_directory(STATIC, "index.html", max_age=0))

    @bp.get("/ui/<path:filename>")
    def asset(filename: str):
        return _secured(send_from_directory(STATIC, filename, max_age=0))  # 404 outside STATIC

    @bp.get("/api/v1/events")
    def event_stream():
        if events is None:
            raise Unavailable("this reducer has no event source")
        sub = events.subscribe()  # 503 at the limit of viewers
        # The server sends this on its event loop after the (empty) WSGI body: no worker thread is held.
        request.environ[ASYNC_BODY] = EventStream(sub, keepalive_s)
        return Response(
            iter(()),
            mimetype="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    return bp
