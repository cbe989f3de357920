"""Who may call what: the one table of roles per REST route and per gRPC method.

A route or method missing from these tables is refused to everyone (deny by default); a test builds
its authorization matrix from the OpenAPI document and the proto's descriptors, so a new route or
RPC without a rule here fails it. Roles do not nest, except that an admin may read whatever a viewer
may. Which *identity* a caller may act as (a client only as itself) is checked where the request is
decoded, with :func:`require_subject`.
"""

from __future__ import annotations

from fedn.auth.tokens import Principal, Role
from fedn.errors import PermissionDenied

__all__ = ["GRPC_RULES", "OPEN", "REST_RULES", "grpc_roles", "require_subject", "rest_roles"]

OPEN: frozenset[Role] = frozenset()  # no token needed
_VIEW = frozenset({Role.ADMIN, Role.VIEWER})
_ADMIN = frozenset({Role.ADMIN})
_ANY = frozenset(Role)
_COMBINER = frozenset({Role.COMBINER})
_CLIENT = frozenset({Role.CLIENT})
_REDUCER = frozenset({Role.REDUCER})

_API = "/api/v1"
REST_RULES: dict[tuple[str, str], frozenset[Role]] = {
    ("GET", f"{_API}/health"): OPEN,
    ("GET", f"{_API}/openapi.json"): _ANY,
    # the Swagger UI page and its vendored files: static, no data, no secret (the document keeps its roles)
    ("GET", f"{_API}/docs"): OPEN,
    ("GET", f"{_API}/docs/{{asset}}"): OPEN,
    ("POST", f"{_API}/combiners"): _COMBINER,
    ("PUT", f"{_API}/combiners/{{combiner_id}}/heartbeat"): _COMBINER,
    ("GET", f"{_API}/combiners"): _VIEW,
    ("GET", f"{_API}/combiners/{{combiner_id}}"): _VIEW,
    ("POST", f"{_API}/clients/assign"): _CLIENT,
    ("GET", f"{_API}/clients"): _VIEW,
    ("GET", f"{_API}/clients/{{client_id}}"): _VIEW,
    ("POST", f"{_API}/models"): _ADMIN,
    ("GET", f"{_API}/models"): _VIEW,
    ("GET", f"{_API}/models/{{model_id}}"): _VIEW,
    ("GET", f"{_API}/models/{{model_id}}/download"): _VIEW,
    ("POST", f"{_API}/sessions"): _ADMIN,
    ("GET", f"{_API}/sessions"): _VIEW,
    ("GET", f"{_API}/sessions/{{session_id}}"): _VIEW,
    ("GET", f"{_API}/sessions/{{session_id}}/rounds"): _VIEW,
    ("POST", f"{_API}/sessions/{{session_id}}/stop"): _ADMIN,
    ("GET", f"{_API}/rounds/{{round_id}}"): _VIEW,
    ("GET", f"{_API}/audit"): _ADMIN,
    ("POST", f"{_API}/tokens"): _ADMIN,
    ("GET", f"{_API}/tokens"): _ADMIN,
    ("POST", f"{_API}/tokens/{{token_id}}/revoke"): _ADMIN,
    ("GET", f"{_API}/events"): _VIEW,
    # the dashboard's page and assets hold no data and no secret; its data comes from the routes above
    ("GET", "/"): OPEN,
    ("GET", "/ui/{filename}"): OPEN,
    ("GET", "/metrics"): _VIEW,  # Prometheus, with a viewer token (docs/operations.md)
}

_SERVICE = "/fedn.v1.Combiner/"
GRPC_RULES: dict[str, frozenset[Role]] = {
    _SERVICE + "TaskStream": _CLIENT,
    _SERVICE + "DownloadModel": _CLIENT,
    _SERVICE + "RequestUpload": _CLIENT,
    _SERVICE + "UploadUpdate": _CLIENT,
    _SERVICE + "ReportFailure": _CLIENT,
    _SERVICE + "ReportEvaluation": _CLIENT,
    _SERVICE + "RunRound": _REDUCER,
    _SERVICE + "AnnounceModel": _REDUCER,
    _SERVICE + "AbandonRound": _REDUCER,
}


def rest_roles(method: str, path_template: str) -> frozenset[Role] | None:
    """Roles allowed on ``method path_template`` (OpenAPI form, ``{id}``); None for an unknown route."""
    return REST_RULES.get((method.upper(), path_template))


def grpc_roles(full_method: str) -> frozenset[Role] | None:
    """Roles allowed on ``/package.Service/Method``; None for an unknown method."""
    return GRPC_RULES.get(full_method)


def require_subject(principal: Principal | None, claimed_id: str, what: str) -> None:
    """A caller acts only as itself: ``claimed_id`` (a client or combiner id in the request) must be
    the token's subject. No principal means authentication is off (a loopback test federation)."""
    if principal is not None and claimed_id != principal.subject:
        raise PermissionDenied(
            f"{what} {claimed_id!r} is not the caller: the token was issued to {principal.subject!r}"
        )
