"""Errors waitress answers itself, before Flask sees the request, in the API's JSON shape.

A body over waitress's ``max_request_body_size``, a malformed request line or oversized headers are
refused by the HTTP server, not the app; its default answer is ``text/plain``. Clients of the API
read every error as ``{"error", "detail"}`` (see ``reducer.api.register_error_handlers``).
"""

from __future__ import annotations

import json

from waitress.channel import HTTPChannel
from waitress.task import ErrorTask

__all__ = ["JsonErrorChannel"]


class _JsonErrorTask(ErrorTask):
    def execute(self) -> None:
        error = self.request.error
        body = json.dumps({"error": error.reason.lower(), "detail": error.body}).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class JsonErrorChannel(HTTPChannel):
    """waitress's channel, with its own error answers in JSON; set as the server's ``channel_class``."""

    error_task_class = _JsonErrorTask
