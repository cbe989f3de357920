"""The OpenAPI 3.1 document of /api/v1; record schemas come from the pydantic models, so they cannot drift."""

from __future__ import annotations

from functools import lru_cache

import fedn
from fedn.auth.policy import OPEN, rest_roles
from fedn.ids import ID_PATTERN
from fedn.records import AuditEvent, ClientRecord, CombinerRecord, ModelRecord, Round, Session, TokenRecord
from reducer.admin_api import AuditQuery
from reducer.edge import MAX_DEPTH, MAX_JSON_BYTES
from reducer.openapi_lists import LIST_QUERIES, iso_timestamps, list_response, query_parameters
from reducer.requests import (
    AssignRequest,
    HeartbeatRequest,
    ModelPage,
    OffsetPage,
    Page,
    RegisterCombinerRequest,
    SessionRequest,
    TokenPage,
)
from reducer.swagger import docs_paths
from reducer.token_api import IssueTokenRequest

__all__ = ["LIST_QUERIES", "json_operations", "openapi_document"]  # LIST_QUERIES: see reducer.openapi_lists


_SCHEMAS = [
    Session,
    Round,
    ModelRecord,
    ClientRecord,
    CombinerRecord,
    SessionRequest,
    RegisterCombinerRequest,
    HeartbeatRequest,
    AssignRequest,
    TokenRecord,
    IssueTokenRequest,
    AuditEvent,
]


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str = "OK") -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict:
    text = {
        400: "invalid request",
        401: "no token, or an invalid, expired or revoked one",
        403: "the token's role or subject may not do this",
        404: "not found",
        409: "conflict",
        413: "payload too large",
        415: "unsupported media type",
        503: "unavailable",
    }
    return {str(c): _json(_ref("Error"), text[c]) for c in sorted(codes)}


def _body(name: str) -> dict:
    return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}


_JSON_BODY_ERRORS = (400, 413, 415)  # what the edge answers for any JSON body (reducer.edge)

_ID = {"type": "string", "pattern": ID_PATTERN}


def _path_param(name: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": _ID}


_LIMITS = (
    f"Every error is JSON (the Error schema). JSON bodies are at most {MAX_JSON_BYTES} bytes (413), sent as "
    f"application/json (415), nested at most {MAX_DEPTH} levels, without NaN or infinities and with integers "
    "within int64 (400, naming the field). Ids match the id pattern (400)."
)


@lru_cache(maxsize=1)
def json_operations() -> frozenset[tuple[str, str]]:
    """(path, METHOD) of every operation whose request body is JSON: the edge reads and checks those."""
    return frozenset(
        (path, method.upper())
        for path, operations in openapi_document()["paths"].items()
        for method, operation in operations.items()
        if "application/json" in operation.get("requestBody", {}).get("content", {})
    )


@lru_cache(maxsize=1)
def openapi_document() -> dict:
    schemas = {}
    for model in _SCHEMAS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    schemas["Error"] = {
        "type": "object",
        "required": ["error", "detail"],
        "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
    }
    iso_timestamps(schemas)
    paths = {
        "/api/v1/health": {
            "get": {
                "summary": "Liveness, counts of online combiners and clients, and whether tokens are on (open)",
                "responses": {"200": _json({"type": "object"})},
            }
        },
        "/api/v1/openapi.json": {"get": {"summary": "This document", "responses": {"200": _json({"type": "object"})}}},
        "/api/v1/sessions": {
            "get": {
                "summary": "List sessions, newest first",
                "parameters": query_parameters(OffsetPage),
                "responses": {"200": list_response("Session"), **_errors(400)},
            },
            "post": {
                "summary": "Create a training session (validated completely before it is stored)",
                "requestBody": _body("SessionRequest"),
                "responses": {"201": _json(_ref("Session"), "created"), **_errors(*_JSON_BODY_ERRORS, 404, 409)},
            },
        },
        "/api/v1/sessions/{session_id}": {
            "get": {
                "summary": "One session",
                "parameters": [_path_param("session_id")],
                "responses": {"200": _json(_ref("Session")), **_errors(400, 404)},
            }
        },
        "/api/v1/sessions/{session_id}/stop": {
            "post": {
                "summary": "Stop a running session (its round is abandoned at every combiner) or cancel a pending one",
                "parameters": [_path_param("session_id")],
                "responses": {"202": _json(_ref("Session"), "stopping, or stopped"), **_errors(400, 404, 409)},
            }
        },
        "/api/v1/sessions/{session_id}/rounds": {
            "get": {
                "summary": "Rounds of a session in order",
                "parameters": [_path_param("session_id"), *query_parameters(Page)],
                "responses": {"200": list_response("Round"), **_errors(400, 404)},
            }
        },
        "/api/v1/rounds/{round_id}": {
            "get": {
                "summary": "One round, with its failures and metric summaries",
                "parameters": [_path_param("round_id")],
                "responses": {"200": _json(_ref("Round")), **_errors(400, 404)},
            }
        },
        "/api/v1/models": {
            "get": {
                "summary": "List models, newest first",
                "parameters": query_parameters(ModelPage),
                "responses": {"200": list_response("ModelRecord"), **_errors(400)},
            },
            "post": {
                "summary": "Upload a model (a safetensors file), e.g. a seed model",
                "requestBody": {
                    "required": True,
                    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                },
                "responses": {"201": _json(_ref("ModelRecord"), "created"), **_errors(400, 413)},
            },
        },
        "/api/v1/models/{model_id}": {
            "get": {
                "summary": "A model's record",
                "parameters": [_path_param("model_id")],
                "responses": {"200": _json(_ref("ModelRecord")), **_errors(400, 404)},
            }
        },
        "/api/v1/models/{model_id}/download": {
            "get": {
                "summary": "The model as a safetensors file",
                "parameters": [_path_param("model_id")],
                "responses": {
                    "200": {
                        "description": "safetensors file",
                        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    **_errors(400, 404),
                },
            }
        },
        "/api/v1/clients": {
            "get": {
                "summary": "List clients, newest assigned first",
                "parameters": query_parameters(OffsetPage),
                "responses": {"200": list_response("ClientRecord"), **_errors(400)},
            }
        },
        "/api/v1/clients/{client_id}": {
            "get": {
                "summary": "One client",
                "parameters": [_path_param("client_id")],
                "responses": {"200": _json(_ref("ClientRecord")), **_errors(400, 404)},
            }
        },
        "/api/v1/clients/assign": {
            "post": {
                "summary": "Assign a client to the least-loaded live combiner",
                "requestBody": _body("AssignRequest"),
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "client_id": {"type": "string"},
                                "combiner_id": {"type": "string"},
                                "combiner_address": {"type": "string"},
                            },
                        }
                    ),
                    **_errors(*_JSON_BODY_ERRORS, 503),
                },
            }
        },
        "/api/v1/combiners": {
            "get": {
                "summary": "List combiners, oldest registered first",
                "parameters": query_parameters(Page),
                "responses": {"200": list_response("CombinerRecord"), **_errors(400)},
            },
            "post": {
                "summary": "Register (or re-register) a combiner",
                "requestBody": _body("RegisterCombinerRequest"),
                "responses": {"200": _json(_ref("CombinerRecord")), **_errors(*_JSON_BODY_ERRORS)},
            },
        },
        "/api/v1/combiners/{combiner_id}": {
            "get": {
                "summary": "One combiner",
                "parameters": [_path_param("combiner_id")],
                "responses": {"200": _json(_ref("CombinerRecord")), **_errors(400, 404)},
            }
        },
        "/api/v1/combiners/{combiner_id}/heartbeat": {
            "put": {
                "summary": "A combiner's heartbeat with the clients connected to it",
                "parameters": [_path_param("combiner_id")],
                "requestBody": _body("HeartbeatRequest"),
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "status": {"type": "string", "enum": ["online", "offline"]},
                                "num_clients": {"type": "integer", "minimum": 0},
                                "shed": {
                                    "type": "integer",
                                    "minimum": 0,
                                    "description": "how many idle clients the combiner should disconnect (status "
                                    "UNAVAILABLE) so they ask for a less loaded combiner; 0 when balanced or "
                                    "rebalancing is off (absent from older reducers: 0)",
                                },
                                "revoked": {
                                    "type": "array",
                                    "items": {"type": "string"},
                                    "description": "ids of revoked tokens that have not expired: the combiner "
                                    "refuses them from now on",
                                },
                            },
                            "required": ["status", "num_clients"],
                        }
                    ),
                    **_errors(*_JSON_BODY_ERRORS, 404),
                },
            }
        },
    }
    paths |= _token_paths() | _audit_paths() | docs_paths() | _event_paths() | _metrics_paths()
    _secure(paths)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "fedn reducer API",
            "version": fedn.__version__,
            "description": f"Sessions, rounds, models, clients and combiners of a fedn federation. {_LIMITS}",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
        "security": [{"bearer": []}],
    }


def _token_paths() -> dict:
    return {
        "/api/v1/tokens": {
            "get": {
                "summary": "Tokens issued by this reducer (without the tokens themselves)",
                "parameters": query_parameters(TokenPage),
                "responses": {"200": list_response("TokenRecord"), **_errors(400, 409)},
            },
            "post": {
                "summary": "Issue a token for a role and subject; the token is shown once, in this answer",
                "requestBody": _body("IssueTokenRequest"),
                "responses": {
                    "201": _json(
                        {
                            "allOf": [
                                _ref("TokenRecord"),
                                {"type": "object", "properties": {"token": {"type": "string"}}},
                            ]
                        },
                        "created",
                    ),
                    **_errors(*_JSON_BODY_ERRORS, 409),
                },
            },
        },
        "/api/v1/tokens/{token_id}/revoke": {
            "post": {
                "summary": "Revoke a token: the reducer refuses it at once, combiners from their next heartbeat",
                "parameters": [_path_param("token_id")],
                "responses": {"200": _json(_ref("TokenRecord")), **_errors(400, 409)},
            }
        },
    }


def _event_paths() -> dict:
    stream = {
        "description": "server-sent events (event: hello, session, round, models, federation; data: one JSON "
        "line, a Session or Round record for those kinds) and a keep-alive comment every 15 s",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
    summary = "Live changes for the dashboard; a viewer that stops reading is dropped"
    page = {"text/html": {"schema": {"type": "string"}}}
    html = {"description": "the dashboard (open: no data in it)", "content": page}
    asset = {"name": "filename", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "/api/v1/events": {"get": {"summary": summary, "responses": {"200": stream, **_errors(503)}}},
        "/": {"get": {"summary": "The dashboard page (docs/dashboard.md)", "responses": {"200": html}}},
        "/ui/{filename}": {
            "get": {
                "summary": "The dashboard's scripts, styles and vendored chart library",
                "parameters": [asset],
                "responses": {"200": {"description": "a static file"}, **_errors(404)},
            }
        },
    }


def _metrics_paths() -> dict:
    text = {
        "description": "Prometheus text exposition format (docs/operations.md lists the metrics)",
        "content": {"text/plain; version=0.0.4": {"schema": {"type": "string"}}},
    }
    summary = "Metrics for Prometheus: rounds, merges, sessions, combiners, clients, HTTP requests"
    return {"/metrics": {"get": {"summary": summary, "responses": {"200": text}}}}


def _audit_paths() -> dict:
    page = list_response("AuditEvent")
    page["content"]["application/json"]["schema"]["properties"]["next_before"] = {
        "type": ["number", "null"],
        "description": "before= of the next page (the older way to page); null at the end",
    }
    summary = "The audit log, newest first: who did what, from where, with which outcome (never a token)"
    return {
        "/api/v1/audit": {
            "get": {
                "summary": summary,
                "parameters": query_parameters(AuditQuery),
                "responses": {"200": page, **_errors(400)},
            }
        }
    }


def _secure(paths: dict) -> None:
    """Each operation says which roles may call it (from fedn.auth.policy) and answers 401/403."""
    for path, operations in paths.items():
        for method, operation in operations.items():
            roles = rest_roles(method, path)
            if roles == OPEN:
                operation["security"] = []
                continue
            operation["security"] = [{"bearer": []}]
            names = sorted(r.value for r in roles or ())
            operation["x-fedn-roles"] = names
            operation["description"] = (
                operation.get("description", "") + f" Roles: {', '.join(names) or 'none'}."
            ).strip()
            operation["responses"].update(_errors(401, 403))
