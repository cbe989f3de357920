"""The list routes' share of the OpenAPI document: their query parameters, page schema and ISO times.

Parameters are made from the query models the routes parse (:data:`LIST_QUERIES`), so the document
and the routes cannot disagree; ``tests/unit/test_openapi_drift.py`` checks the routes against it.
"""

from __future__ import annotations

from pydantic import BaseModel

from fedn.rest_records import TIMESTAMP_FIELDS
from reducer.admin_api import AuditQuery
from reducer.requests import ModelPage, OffsetPage, Page, TokenPage

__all__ = ["LIST_QUERIES", "iso_timestamps", "list_response", "query_parameters"]

_API = "/api/v1"
LIST_QUERIES: dict[tuple[str, str], type[BaseModel]] = {
    ("GET", f"{_API}/combiners"): Page,
    ("GET", f"{_API}/clients"): OffsetPage,
    ("GET", f"{_API}/models"): ModelPage,
    ("GET", f"{_API}/sessions"): OffsetPage,
    ("GET", f"{_API}/sessions/{{session_id}}/rounds"): Page,
    ("GET", f"{_API}/audit"): AuditQuery,
    ("GET", f"{_API}/tokens"): TokenPage,
}
"""The query model each list route parses: the document's parameters are made from it."""


def list_response(name: str) -> dict:
    return _json_response(
        {
            "type": "object",
            "required": ["items", "count", "total", "next_cursor"],
            "properties": {
                "items": {"type": "array", "items": _ref(name)},
                "count": {"type": "integer", "minimum": 0, "description": "items on this page"},
                "total": {"type": "integer", "minimum": 0, "description": "items matching, on all pages"},
                "next_cursor": {
                    "type": ["string", "null"],
                    "description": "cursor= of the next page; null on the last page",
                },
            },
        }
    )


def query_parameters(model: type[BaseModel]) -> list[dict]:
    """The query parameters of a list route, from the model the route parses (cannot drift)."""
    parameters = []
    for name, prop in model.model_json_schema()["properties"].items():
        description = prop.pop("description", "")
        # a query parameter is absent, never null: keep the one non-null branch of an optional
        branches = [b for b in prop.pop("anyOf", []) if b.get("type") != "null"]
        schema = {**prop, **branches[0]} if len(branches) == 1 else prop
        if "default" in schema and schema["default"] is None:
            del schema["default"]
        parameters.append({"name": name, "in": "query", "description": description, "schema": schema})
    return parameters


def iso_timestamps(schemas: dict) -> None:
    """Records travel with ISO 8601 UTC times (fedn.rest_records), not the stores' epoch floats."""
    for model, names in TIMESTAMP_FIELDS.items():
        properties = schemas.get(model.__name__, {}).get("properties", {})
        for name in names:
            field = model.model_fields[name]
            iso = {"type": "string", "format": "date-time", "examples": ["2026-11-30T08:05:13.123456Z"]}
            if not field.is_required() and field.default is None:
                iso = {"anyOf": [iso, {"type": "null"}], "default": None}
            properties[name] = {"title": properties.get(name, {}).get("title", name), **iso}


def _json_response(schema: dict, description: str = "OK") -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}
