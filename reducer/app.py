"""The Flask application factory (no module-level app)."""

from __future__ import annotations

from flask import Flask

from fedn.metrics import reducer_metrics
from reducer.admin_api import create_admin_api
from reducer.api import ApiContext, _body, _check_request, create_api, register_error_handlers
from reducer.auth import install_auth
from reducer.dashboard import create_dashboard
from reducer.events import EventHub
from reducer.metrics_api import create_metrics_api, install_http_metrics
from reducer.swagger import create_docs_api
from reducer.token_api import create_token_api

__all__ = ["create_app"]


def create_app(ctx: ApiContext, events: EventHub | None = None) -> Flask:
    app = Flask("fedn.reducer")
    app.config["MAX_CONTENT_LENGTH"] = ctx.max_model_bytes  # werkzeug answers 413 before reading the body
    app.json.sort_keys = False
    install_auth(app, ctx.auth, ctx.audit)  # before every route: the token and the route's roles
    app.register_blueprint(create_api(ctx))
    app.register_blueprint(create_admin_api(ctx))
    app.register_blueprint(create_docs_api())
    tokens = create_token_api(ctx.auth, ctx.audit, _body)
    tokens.before_request(_check_request)
    app.register_blueprint(tokens)
    app.register_blueprint(create_dashboard(events))
    app.register_blueprint(create_metrics_api(ctx.state, ctx.registry, reducer_metrics()))  # GET /metrics
    install_http_metrics(app, reducer_metrics())
    register_error_handlers(app)
    return app
