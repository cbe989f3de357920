"""Admin routes under /api/v1: the audit log. Who may call them is the auth hook's business (admin only)."""

from __future__ import annotations

from typing import Protocol

from flask import Blueprint, jsonify, request
from pydantic import Field, field_validator

from fedn.audit import ACTIONS, AuditLog
from fedn.store.base import StateStore
from reducer.edge import Line
from reducer.paging import page_body
from reducer.requests import Page, parse

__all__ = ["MAX_AUDIT_PAGE", "AdminContext", "AuditQuery", "create_admin_api"]

MAX_AUDIT_PAGE = 1000
"""The most audit events one request returns."""


class AdminContext(Protocol):
    """What the admin routes need (the reducer's ApiContext has both)."""

    state: StateStore
    audit: AuditLog


class AuditQuery(Page):
    """``GET /api/v1/audit``'s query, checked before the store is asked."""

    limit: int = Field(100, ge=1, le=MAX_AUDIT_PAGE, description="events per page, newest first")
    before: float | None = Field(
        None,
        description="only events before this time (seconds since the epoch); paging by cursor is simpler, "
        "this older way stays: the previous page's next_before",
    )
    action: str | None = Field(None, description="only this action, one of fedn.audit.ACTIONS")
    subject: Line(128, 1) | None = Field(None, description="only events of this subject (a token's subject)")

    @field_validator("action")
    @classmethod
    def _known_action(cls, value: str | None) -> str | None:
        if value is not None and value not in ACTIONS:
            raise ValueError(f"unknown action; one of {', '.join(sorted(ACTIONS))}")
        return value


def create_admin_api(ctx: AdminContext) -> Blueprint:
    api = Blueprint("admin_v1", __name__, url_prefix="/api/v1")

    @api.get("/audit")
    def list_audit():
        query = parse(AuditQuery, request.args)
        events = ctx.state.list_audit(
            limit=query.limit + 1, before=query.before, action=query.action, subject=query.subject, after=query.after
        )
        body = page_body(events, query.limit, ctx.state.count_audit(action=query.action, subject=query.subject))
        body["next_before"] = events[query.limit - 1].time if body["next_cursor"] else None
        return jsonify(body)

    return api
