"""Tokens over REST (admin only): issue, list, revoke. The signing key never leaves the reducer."""

from __future__ import annotations

import time
from collections.abc import Callable

from flask import Blueprint, jsonify, request
from pydantic import BaseModel, ConfigDict, Field

from fedn.audit import AuditLog
from fedn.auth.tokens import MAX_TTL_S, Role
from fedn.errors import FailedPrecondition, NotFound
from fedn.records import TokenRecord
from fedn.rest_records import record_to_rest
from reducer.auth import ReducerAuth, caller
from reducer.edge import Id
from reducer.paging import page_body
from reducer.requests import TokenPage, parse

__all__ = ["IssueTokenRequest", "create_token_api"]


class IssueTokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role
    subject: Id
    ttl_s: float = Field(30 * 86400, ge=60, le=MAX_TTL_S, description="seconds the token is valid")


def create_token_api(
    auth: ReducerAuth | None, audit: AuditLog, body: Callable[[], dict], wall: Callable[[], float] = time.time
) -> Blueprint:
    api = Blueprint("tokens_v1", __name__, url_prefix="/api/v1")

    def need_auth() -> ReducerAuth:
        if auth is None:
            raise FailedPrecondition("tokens are off: start the reducer with --token-signing-key to issue them")
        return auth

    def who() -> tuple[str, str]:
        principal = caller()
        return (principal.subject, principal.role.value) if principal else ("", "")

    @api.post("/tokens")
    def issue_token():
        keys = need_auth()
        req = parse(IssueTokenRequest, body())
        issued = keys.issuer.issue(req.role, req.subject, req.ttl_s)
        subject, role = who()
        record = TokenRecord(
            id=issued.principal.token_id,
            subject=req.subject,
            role=req.role.value,
            issued_at=issued.issued_at,
            expires_at=issued.principal.expires_at,
            issued_by=subject,
        )
        keys.state.put_token(record)
        audit.record(
            "token.issue",
            subject=subject,
            role=role,
            peer=request.remote_addr or "",
            target=f"token {record.id} ({record.role} {record.subject})",
            outcome="ok",
        )
        return jsonify({"token": issued.token, **record_to_rest(record)}), 201

    @api.get("/tokens")
    def list_tokens():
        keys = need_auth()
        page = parse(TokenPage, request.args)
        now = wall()
        records = keys.state.list_tokens(
            include_expired=page.include_expired, now=now, limit=page.limit + 1, after=page.after
        )
        total = keys.state.count_tokens(include_expired=page.include_expired, now=now)
        return jsonify(page_body(records, page.limit, total))

    @api.post("/tokens/<token_id>/revoke")
    def revoke_token(token_id: str):
        keys = need_auth()
        subject, role = who()
        now = wall()
        try:
            record = keys.state.revoke_token(token_id, by=subject, at=now)
        except NotFound:
            # a token made offline (`fedn token create --key`) has no record: keep its id revoked for as
            # long as any token can live
            placeholder = TokenRecord(
                id=token_id, subject="", role="", issued_at=now, expires_at=now + MAX_TTL_S, issued_by="offline"
            )
            keys.state.put_token(placeholder)
            record = keys.state.revoke_token(token_id, by=subject, at=now)
        keys.refresh_revocations(force=True)
        audit.record(
            "token.revoke",
            subject=subject,
            role=role,
            peer=request.remote_addr or "",
            target=f"token {token_id}",
            outcome="ok",
        )
        return jsonify(record_to_rest(record))

    return api
