"""Authentication at the reducer: the one Flask hook, revocations, and the reducer's own token.

Every request passes :func:`install_auth`'s hook before its route: the route's roles come from
:data:`fedn.auth.policy.REST_RULES` (a route missing there is refused to everyone), the bearer token
is verified, and the caller is left in ``flask.g.principal`` for the routes that bind ids to it.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable

from flask import Flask, g, request

from fedn.audit import AuditLog
from fedn.auth.policy import OPEN, rest_roles
from fedn.auth.tokens import IssuedToken, Principal, Role, TokenIssuer, TokenVerifier, bearer_token
from fedn.errors import FednError, PermissionDenied
from fedn.store.base import StateStore

__all__ = ["ReducerAuth", "caller", "install_auth"]

logger = logging.getLogger(__name__)

_RULE_ARG = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")
_OWN_TOKEN_TTL_S = 3600.0
_RENEW_BEFORE_S = 600.0


class ReducerAuth:
    """The reducer's keys and what it knows of revocations.

    Revocations are read from the state store at most every ``refresh_s`` seconds (at once after a
    revocation through this reducer), so several reducers sharing a store agree within that time.
    """

    def __init__(
        self,
        state: StateStore,
        issuer: TokenIssuer,
        verifier: TokenVerifier,
        *,
        refresh_s: float = 5.0,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.issuer = issuer
        self.verifier = verifier
        self._refresh_s = refresh_s
        self._wall = wall
        self._loaded_at = float("-inf")
        self._lock = threading.Lock()
        self._own: IssuedToken | None = None

    def refresh_revocations(self, *, force: bool = False) -> None:
        now = self._wall()
        with self._lock:
            if not force and now - self._loaded_at < self._refresh_s:
                return
            self._loaded_at = now
        try:
            self.verifier.set_revoked(self.state.revoked_token_ids(now))
        except FednError as exc:  # keep the last list: a store outage must not admit revoked tokens anew
            logger.warning("cannot read revoked tokens, keeping the last list: %s", exc.message)

    def verify(self, token: str) -> Principal:
        self.refresh_revocations()
        return self.verifier.verify(token)

    def revoked_ids(self) -> list[str]:
        """Sent to combiners with every heartbeat answer."""
        self.refresh_revocations()
        return sorted(self.verifier.revoked)

    def own_token(self) -> str:
        """The token the reducer presents to combiners (role reducer), renewed before it expires."""
        with self._lock:
            if self._own is None or self._own.principal.expires_at - self._wall() < _RENEW_BEFORE_S:
                self._own = self.issuer.issue(Role.REDUCER, "reducer", _OWN_TOKEN_TTL_S)
            return self._own.token


def caller() -> Principal | None:
    """The verified caller of the request being served; None when authentication is off."""
    return g.get("principal")


def _template(rule: str) -> str:
    return _RULE_ARG.sub(r"{\1}", rule)


def install_auth(app: Flask, auth: ReducerAuth | None, audit: AuditLog) -> None:
    """Check every request's token and role before its route runs (``auth=None``: off, loopback only)."""

    @app.before_request
    def authenticate() -> None:
        g.principal = None
        rule = request.url_rule
        if rule is None or request.method == "OPTIONS":
            return  # Flask answers 404 / 405 / OPTIONS itself, with nothing of the federation in it
        method = "GET" if request.method == "HEAD" else request.method
        roles = rest_roles(method, _template(rule.rule))
        principal: Principal | None = None
        try:
            if roles is None:
                raise PermissionDenied(f"{method} {rule.rule} has no access rule and is refused")
            if roles == OPEN or auth is None:
                return
            principal = auth.verify(bearer_token(request.headers.get("Authorization")))
            if principal.role not in roles:
                allowed = ", ".join(sorted(r.value for r in roles))
                raise PermissionDenied(
                    f"{method} {_template(rule.rule)} needs the role {allowed}, not {principal.role}"
                )
        except FednError as exc:
            logger.warning("refused %s %s from %s: %s", method, request.path, request.remote_addr, exc.message)
            audit.record(
                "auth.denied",
                subject=principal.subject if principal else "",
                role=principal.role.value if principal else "",
                peer=request.remote_addr or "",
                target=f"{method} {request.path}",
                outcome="denied",
                detail=exc.message,
            )
            raise
        g.principal = principal
