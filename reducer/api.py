"""The REST API under /api/v1: routes decode the request, call the stores/registry, encode JSON."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

import numpy as np
from flask import Blueprint, Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge, UnsupportedMediaType

import fedn
from fedn.codec import check_finite, decode_model
from fedn.errors import Conflict, FednError, InvalidArgument, NotFound, PayloadTooLarge
from fedn.logs import escape_controls
from fedn.models import save_model
from fedn.records import Session
from fedn.session_options import check_session_options
from fedn.store.base import ModelStore, StateStore
from reducer.controller import Controller
from reducer.edge import MAX_JSON_BYTES, check_ids, load_json
from reducer.openapi import json_operations, openapi_document
from reducer.registry import CombinerRegistry
from reducer.requests import AssignRequest, HeartbeatRequest, Page, RegisterCombinerRequest, SessionRequest, parse

__all__ = ["ApiContext", "create_api", "register_error_handlers"]

logger = logging.getLogger(__name__)


@dataclass
class ApiContext:
    """What the routes need; built once by the server and passed in."""

    state: StateStore
    models: ModelStore
    registry: CombinerRegistry
    controller: Controller | None
    max_model_bytes: int = 1 << 30


_MAX_DETAIL_CHARS = 2000


def _check_request() -> None:
    """The edge of every route (DESIGN §9): ids in the path match the id pattern, and a route whose
    OpenAPI operation takes a JSON body gets it read (at most MAX_JSON_BYTES), parsed and checked
    once, here; the route reads it with :func:`_body`."""
    check_ids(request.view_args or {})
    rule = request.url_rule
    if rule is None or (rule.rule.replace("<", "{").replace(">", "}"), request.method) not in json_operations():
        return
    if (request.content_length or 0) > MAX_JSON_BYTES:
        raise PayloadTooLarge(f"a JSON body is at most {MAX_JSON_BYTES} bytes; this one has {request.content_length}")
    request.max_content_length = MAX_JSON_BYTES
    try:
        data = request.get_data(cache=True)
    except RequestEntityTooLarge:  # no Content-Length: the stream ran past the bound
        raise PayloadTooLarge(f"a JSON body is at most {MAX_JSON_BYTES} bytes") from None
    if not data:
        g.json_body = {}
        return
    if not request.is_json:
        raise UnsupportedMediaType(f"send the body as application/json, not {request.mimetype or 'no type'!r}")
    payload = load_json(data)
    if not isinstance(payload, dict):
        raise InvalidArgument("request body must be a JSON object")
    g.json_body = payload


def _body() -> dict:
    """The request's JSON object, read and checked by :func:`_check_request` (the route documents it)."""
    return g.json_body


def _items(records) -> Response:
    items = [r.model_dump(mode="json") for r in records]
    return jsonify({"items": items, "count": len(items)})


def create_api(ctx: ApiContext) -> Blueprint:
    api = Blueprint("api_v1", __name__, url_prefix="/api/v1")
    api.before_request(_check_request)

    @api.get("/health")
    def health():
        live = ctx.registry.live()
        return jsonify(
            {
                "status": "ok",
                "version": fedn.__version__,
                "combiners_online": len(live),
                "clients_online": sum(c.num_clients for c in live),
            }
        )

    @api.get("/openapi.json")
    def openapi():
        return jsonify(openapi_document())

    # combiners
    @api.post("/combiners")
    def register_combiner():
        req = parse(RegisterCombinerRequest, _body())
        return jsonify(ctx.registry.register(req.id, req.name, req.address).model_dump(mode="json"))

    @api.put("/combiners/<combiner_id>/heartbeat")
    def combiner_heartbeat(combiner_id: str):
        req = parse(HeartbeatRequest, _body())
        record = ctx.registry.heartbeat(combiner_id, req.client_ids)
        shed = ctx.registry.to_shed(combiner_id)
        return jsonify({"status": record.status, "num_clients": record.num_clients, "shed": shed})

    @api.get("/combiners")
    def list_combiners():
        ctx.registry.refresh()
        return _items(ctx.state.list_combiners())

    @api.get("/combiners/<combiner_id>")
    def get_combiner(combiner_id: str):
        ctx.registry.refresh()
        return jsonify(ctx.state.get_combiner(combiner_id).model_dump(mode="json"))

    # clients
    @api.post("/clients/assign")
    def assign_client():
        req = parse(AssignRequest, _body())
        return jsonify(ctx.registry.assign(req.name, req.client_id))

    @api.get("/clients")
    def list_clients():
        page = parse(Page, request.args)
        ctx.registry.refresh()
        return _items(ctx.state.list_clients(limit=page.limit, offset=page.offset))

    @api.get("/clients/<client_id>")
    def get_client(client_id: str):
        return jsonify(ctx.state.get_client(client_id).model_dump(mode="json"))

    # models
    @api.post("/models")
    def upload_model():
        blob = request.get_data(cache=False)
        if len(blob) > ctx.max_model_bytes:
            raise PayloadTooLarge(f"upload of {len(blob)} bytes exceeds the limit of {ctx.max_model_bytes} bytes")
        arrays = decode_model(blob)
        for name, array in arrays.items():
            check_finite(name, np.asarray(array))
        record = save_model(ctx.models, arrays)
        ctx.state.put_model(record)
        logger.info("model %s uploaded (%d parameters)", record.id, record.num_parameters)
        return jsonify(record.model_dump(mode="json")), 201

    @api.get("/models")
    def list_models():
        page = parse(Page, request.args)
        return _items(ctx.state.list_models(session_id=page.session_id, limit=page.limit, offset=page.offset))

    @api.get("/models/<model_id>")
    def get_model(model_id: str):
        return jsonify(ctx.state.get_model(model_id).model_dump(mode="json"))

    @api.get("/models/<model_id>/download")
    def download_model(model_id: str):
        record = ctx.state.get_model(model_id)
        if not ctx.models.exists(record.key):
            raise NotFound(f"model {model_id!r} has a record but its blob is missing from the model store")
        return Response(
            ctx.models.iter_chunks(record.key, 1 << 20),
            mimetype="application/octet-stream",
            headers={
                "Content-Disposition": f"attachment; filename={model_id}.safetensors",
                "Content-Length": str(record.size_bytes),
            },
        )

    # sessions and rounds
    @api.post("/sessions")
    def create_session():
        req = parse(SessionRequest, _body())
        check_session_options(  # refuse a bad strategy before anything runs
            aggregator=req.aggregator,
            aggregator_params=req.aggregator_config,
            strategy=req.strategy,
            strategy_params=req.strategy_config,
            min_clients=req.min_clients,
            mode=req.mode,
            given=req.model_fields_set,
        )
        if req.model_id is not None:
            seed = ctx.state.get_model(req.model_id)
        else:
            newest = ctx.state.list_models(limit=1)
            if not newest:
                raise Conflict("there is no model to start from: upload a seed model first (fedn model upload)")
            seed = newest[0]
        session = Session(
            rounds=req.rounds,
            aggregator=req.aggregator,
            aggregator_config=req.aggregator_config,
            strategy=req.strategy,
            strategy_config=req.strategy_config,
            round_timeout_s=req.round_timeout_s,
            min_clients=req.min_clients,
            fraction=req.fraction,
            seed=req.seed,
            config=req.config,
            mode=req.mode,
            buffer_size=req.buffer_size,
            staleness_exponent=req.staleness_exponent,
            max_staleness=req.max_staleness,
            seed_model_id=seed.id,
            model_id=seed.id,
        )
        ctx.state.put_session(session)
        if ctx.controller is not None:
            ctx.controller.wake()
        logger.info(
            "session %s created: %d rounds (%s) from model %s", session.id, session.rounds, session.mode, seed.id
        )
        return jsonify(session.model_dump(mode="json")), 201

    @api.get("/sessions")
    def list_sessions():
        page = parse(Page, request.args)
        return _items(ctx.state.list_sessions(limit=page.limit, offset=page.offset))

    @api.get("/sessions/<session_id>")
    def get_session(session_id: str):
        return jsonify(ctx.state.get_session(session_id).model_dump(mode="json"))

    @api.get("/sessions/<session_id>/rounds")
    def list_rounds(session_id: str):
        ctx.state.get_session(session_id)
        return _items(ctx.state.list_rounds(session_id))

    @api.get("/rounds/<round_id>")
    def get_round(round_id: str):
        return jsonify(ctx.state.get_round(round_id).model_dump(mode="json"))

    return api


def register_error_handlers(app: Flask) -> None:
    """Every error is JSON ``{"error", "detail"}``; tracebacks go to the log, never to the caller."""

    def error(status: int, title: str, detail: str):
        if len(detail) > _MAX_DETAIL_CHARS:
            detail = f"{detail[:_MAX_DETAIL_CHARS]}…(+{len(detail) - _MAX_DETAIL_CHARS} chars)"
        return jsonify({"error": title, "detail": escape_controls(detail)}), status

    @app.errorhandler(FednError)
    def fedn_error(exc: FednError):
        log = logger.warning if exc.http_status >= 500 else logger.info
        log("%s %s -> %d: %s", request.method, request.path, exc.http_status, exc.message)
        return error(exc.http_status, exc.title, exc.message)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return error(exc.code or 500, (exc.name or "error").lower(), exc.description or "")

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        request_id = uuid.uuid4().hex[:12]
        logger.exception("%s %s failed (request %s)", request.method, request.path, request_id)
        return error(500, "internal error", f"unexpected error; see the reducer log for request {request_id}")
