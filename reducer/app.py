"""The Flask application factory (no module-level app)."""

from __future__ import annotations

from flask import Flask

from reducer.api import ApiContext, create_api, register_error_handlers

__all__ = ["create_app"]


def create_app(ctx: ApiContext) -> Flask:
    app = Flask("fedn.reducer")
    app.config["MAX_CONTENT_LENGTH"] = ctx.max_model_bytes  # werkzeug answers 413 before reading the body
    app.json.sort_keys = False
    app.register_blueprint(create_api(ctx))
    register_error_handlers(app)
    return app
