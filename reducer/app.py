"""The Flask application factory (no module-level app)."""

from __future__ import annotations

from flask import Flask

from reducer.admin_api import create_admin_api
from reducer.api import ApiContext, _body, _check_request, create_api, register_error_handlers
from reducer.auth import install_auth
from reducer.token_api import create_token_api

__all__ = ["create_app"]


def create_app(ctx: ApiContext) -> Flask:
    app = Flask("fedn.reducer")
    app.config["MAX_CONTENT_LENGTH"] = ctx.max_model_bytes  # werkzeug answers 413 before reading the body
    app.json.sort_keys = False
    install_auth(app, ctx.auth, ctx.audit)  # before every route: the token and the route's roles
    app.register_blueprint(create_api(ctx))
    app.register_blueprint(create_admin_api(ctx))
    tokens = create_token_api(ctx.auth, ctx.audit, _body)
    tokens.before_request(_check_request)
    app.register_blueprint(tokens)
    register_error_handlers(app)
    return app
