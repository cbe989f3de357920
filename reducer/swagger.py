"""The Swagger UI page of the OpenAPI document at /api/v1/docs, served offline from vendored files.

``swagger_ui/`` holds swagger-ui-dist (from the npm registry; version and licence in
``swagger_ui/VERSION`` and ``LICENSE``) and the page that drives it. The page and its assets are
open: they are static and hold no secret. The document itself keeps its roles, so the page asks
for a token, fetches the document with it and pre-authorizes "Try it out" with the same token.
"""

from __future__ import annotations

from importlib.resources import files

from flask import Blueprint, Response

from fedn.errors import NotFound

__all__ = ["ASSETS", "create_docs_api", "docs_paths"]

_DIR = files("reducer") / "swagger_ui"
ASSETS: dict[str, str] = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "fedn-docs.js": "text/javascript",
    "fedn-docs.css": "text/css",
    "LICENSE": "text/plain",
    "NOTICE": "text/plain",
}
"""The files the page may load, by name, with their media types; nothing else is served."""

_CACHE = "public, max-age=3600"


def create_docs_api() -> Blueprint:
    api = Blueprint("docs_v1", __name__, url_prefix="/api/v1")

    @api.get("/docs")
    def docs_page():
        page = (_DIR / "index.html").read_bytes()
        return Response(page, mimetype="text/html", headers={"Cache-Control": "no-cache"})

    @api.get("/docs/<asset>")
    def docs_asset(asset: str):
        if asset not in ASSETS:
            raise NotFound(f"no such file of the API page: {asset!r}; the page loads {', '.join(sorted(ASSETS))}")
        body = (_DIR / asset).read_bytes()
        return Response(body, mimetype=ASSETS[asset], headers={"Cache-Control": _CACHE})

    return api


def docs_paths() -> dict:
    """The page's operations for the OpenAPI document (every /api/v1 route is documented)."""
    text = {"description": "OK", "content": {"text/html": {"schema": {"type": "string"}}}}
    asset = {"description": "the file", "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}}
    error = {"description": "not a file of the page", "content": {"application/json": {"schema": _error_ref()}}}
    return {
        "/api/v1/docs": {
            "get": {
                "summary": "This API in Swagger UI (open; it asks for a token to load the document)",
                "responses": {"200": text},
            }
        },
        "/api/v1/docs/{asset}": {
            "get": {
                "summary": "A static file of the Swagger UI page",
                "parameters": [
                    {"name": "asset", "in": "path", "required": True, "schema": {"type": "string", "enum": [*ASSETS]}}
                ],
                "responses": {"200": asset, "404": error},
            }
        },
    }


def _error_ref() -> dict:
    return {"$ref": "#/components/schemas/Error"}
