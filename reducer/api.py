"""The REST API under /api/v1: routes decode the request, call the stores/registry, encode JSON."""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from flask import Blueprint, Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge, UnsupportedMediaType

import fedn
from fedn.audit import AuditLog
from fedn.auth.policy import require_subject
from fedn.auth.tokens import Role
from fedn.clock import SystemClock
from fedn.errors import (
    ChecksumMismatch,
    Conflict,
    FailedPrecondition,
    FednError,
    InvalidArgument,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
)
from fedn.logs import escape_controls
from fedn.records import ModelRecord, Round, Session, SessionMode
from fedn.rest_records import record_to_rest
from fedn.session_options import check_session_options, session_compression
from fedn.store.base import ModelStore, StateStore
from reducer.auth import ReducerAuth, caller
from reducer.controller import Controller, check_session_capacity
from reducer.edge import MAX_JSON_BYTES, check_ids, load_json
from reducer.openapi import json_operations, openapi_document
from reducer.paging import page_body
from reducer.registry import CombinerRegistry
from reducer.requests import (
    AssignRequest,
    HeartbeatRequest,
    ModelPage,
    OffsetPage,
    Page,
    RegisterCombinerRequest,
    SessionRequest,
    parse,
)
from reducer.uploads import receive_model

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
    max_json_bytes: int = MAX_JSON_BYTES
    max_pending_sessions: int = 100
    auth: ReducerAuth | None = None  # None: tokens are off (a loopback federation without --token-signing-key)
    audit: AuditLog = field(default_factory=lambda: AuditLog(None, SystemClock()))

    def bind(self, claimed_id: str, what: str) -> None:
        """The caller acts only as itself (:func:`require_subject`); a refusal is audited like the hook's."""
        try:
            require_subject(caller(), claimed_id, what)
        except PermissionDenied as exc:
            self.record("auth.denied", f"{request.method} {request.path}", outcome="denied", detail=exc.message)
            raise

    def record(self, action: str, target: str, *, outcome: str = "ok", detail: str = "") -> None:
        """One audit event for the request being served, by its verified caller."""
        principal = caller()
        self.audit.record(
            action,
            subject=principal.subject if principal else "",
            role=principal.role.value if principal else "",
            peer=request.remote_addr or "",
            target=target,
            outcome=outcome,
            detail=detail,
        )


_MAX_DETAIL_CHARS = 2000


def _check_request(max_json_bytes: int = MAX_JSON_BYTES) -> None:
    """The edge of every route (DESIGN §9): ids in the path match the id pattern, and a route whose
    OpenAPI operation takes a JSON body gets it read (at most ``max_json_bytes``, refused on its
    Content-Length before any of it is read), parsed and checked once, here; the route reads it with
    :func:`_body`. The HTTP server refuses larger bodies before Flask sees them; this holds the same
    bound under any other WSGI server."""
    check_ids(request.view_args or {})
    rule = request.url_rule
    if rule is None or (rule.rule.replace("<", "{").replace(">", "}"), request.method) not in json_operations():
        return
    if (request.content_length or 0) > max_json_bytes:
        raise PayloadTooLarge(f"a JSON body is at most {max_json_bytes} bytes; this one has {request.content_length}")
    request.max_content_length = max_json_bytes
    try:
        data = request.get_data(cache=True)
    except RequestEntityTooLarge:  # no Content-Length: the stream ran past the bound
        raise PayloadTooLarge(f"a JSON body is at most {max_json_bytes} bytes") from None
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


def _items(records: list, page: Page, total: int) -> Response:
    """One page of a list route (:mod:`reducer.paging`); ``records`` holds up to ``page.limit + 1``."""
    return jsonify(page_body(records, page.limit, total))


def _verified_chunks(chunks: Iterator[bytes], record: ModelRecord) -> Iterator[bytes]:
    """The blob as it streams, hashed on the way: a blob that does not match its record's sha256 is cut
    off before its last chunk, so the download fails (short of its Content-Length) rather than succeeds."""
    digest = hashlib.sha256()
    held: bytes | None = None
    for chunk in chunks:
        if held is not None:
            yield held
        digest.update(chunk)
        held = chunk
    if digest.hexdigest() != record.sha256:
        logger.error("model %s: its blob does not match the sha256 of its record; download cut off", record.id)
        raise ChecksumMismatch(f"model {record.id}: the stored blob does not match its record's sha256")
    if held is not None:
        yield held


def create_api(ctx: ApiContext) -> Blueprint:
    api = Blueprint("api_v1", __name__, url_prefix="/api/v1")
    api.before_request(lambda: _check_request(ctx.max_json_bytes))

    @api.get("/health")
    def health():
        live = ctx.registry.live()
        return jsonify(
            {
                "status": "ok",
                "version": fedn.__version__,
                "combiners_online": len(live),
                "clients_online": sum(c.num_clients for c in live),
                "tokens": ctx.auth is not None,  # whether every other route needs a bearer token
            }
        )

    @api.get("/openapi.json")
    def openapi():
        return jsonify(openapi_document())

    # combiners
    @api.post("/combiners")
    def register_combiner():
        req = parse(RegisterCombinerRequest, _body())
        ctx.bind(req.id, "combiner id")  # a combiner registers, and moves, only itself
        record = ctx.registry.register(req.id, req.name, req.address)
        ctx.record("combiner.register", f"combiner {req.id} at {req.address}")
        return jsonify(record_to_rest(record))

    @api.put("/combiners/<combiner_id>/heartbeat")
    def combiner_heartbeat(combiner_id: str):
        req = parse(HeartbeatRequest, _body())
        ctx.bind(combiner_id, "combiner id")
        record = ctx.registry.heartbeat(combiner_id, req.client_ids)
        for event in req.audit:  # the combiner's own audit events, into the one audit log
            fields = event.model_dump(exclude={"time", "action", "outcome"})
            try:
                ctx.audit.store_from(
                    combiner_id, time_s=event.time, action=event.action, outcome=event.outcome, **fields
                )
            except InvalidArgument as exc:  # e.g. an action a newer combiner knows: skipped, the heartbeat served
                logger.warning("audit event from combiner %s skipped: %s", combiner_id, exc.message)
        shed = ctx.registry.to_shed(combiner_id)
        revoked = ctx.auth.revoked_ids() if ctx.auth is not None else []
        return jsonify({"status": record.status, "num_clients": record.num_clients, "shed": shed, "revoked": revoked})

    @api.get("/combiners")
    def list_combiners():
        page = parse(Page, request.args)
        ctx.registry.refresh()
        records = ctx.state.list_combiners(limit=page.limit + 1, after=page.after)
        return _items(records, page, ctx.state.count_combiners())

    @api.get("/combiners/<combiner_id>")
    def get_combiner(combiner_id: str):
        ctx.registry.refresh()
        return jsonify(record_to_rest(ctx.state.get_combiner(combiner_id)))

    # clients
    @api.post("/clients/assign")
    def assign_client():
        req = parse(AssignRequest, _body())
        principal = caller()
        client_id = req.client_id
        if principal is not None:  # a client's id is its token's subject
            ctx.bind(client_id or principal.subject, "client id")
            client_id = principal.subject
        return jsonify(ctx.registry.assign(req.name, client_id))

    @api.get("/clients")
    def list_clients():
        page = parse(OffsetPage, request.args)
        ctx.registry.refresh()
        records = ctx.state.list_clients(limit=page.limit + 1, offset=page.offset, after=page.after)
        return _items(records, page, ctx.state.count_clients())

    @api.get("/clients/<client_id>")
    def get_client(client_id: str):
        return jsonify(record_to_rest(ctx.state.get_client(client_id)))

    # models
    @api.post("/models")
    def upload_model():
        if (request.content_length or 0) > ctx.max_model_bytes:
            raise PayloadTooLarge(
                f"upload of {request.content_length} bytes exceeds the limit of {ctx.max_model_bytes} bytes"
            )
        try:
            record = receive_model(request.stream, ctx.max_model_bytes, ctx.models)  # streamed via a temporary file
        except FednError as exc:
            ctx.record("model.upload", "a model", outcome="refused", detail=exc.message)
            raise
        ctx.state.put_model(record)
        ctx.record("model.upload", f"model {record.id}", detail=f"{record.size_bytes} bytes")
        logger.info("model %s uploaded (%d parameters)", record.id, record.num_parameters)
        return jsonify(record_to_rest(record)), 201

    @api.get("/models")
    def list_models():
        page = parse(ModelPage, request.args)
        records = ctx.state.list_models(
            session_id=page.session_id, limit=page.limit + 1, offset=page.offset, after=page.after
        )
        return _items(records, page, ctx.state.count_models(session_id=page.session_id))

    @api.get("/models/<model_id>")
    def get_model(model_id: str):
        return jsonify(record_to_rest(ctx.state.get_model(model_id)))

    @api.get("/models/<model_id>/download")
    def download_model(model_id: str):
        record = ctx.state.get_model(model_id)
        if not ctx.models.exists(record.key):
            raise NotFound(f"model {model_id!r} has a record but its blob is missing from the model store")
        ctx.record("model.download", f"model {model_id}")
        return Response(
            _verified_chunks(ctx.models.iter_chunks(record.key, 1 << 20), record),
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
        compression, downlink_compression = session_compression(req.compression, req.downlink_compression, req.mode)
        if req.mode == SessionMode.EVALUATE and req.rounds != 1:
            raise InvalidArgument("an evaluation session has exactly one round: rounds must be 1")
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
            evaluate_every=req.evaluate_every,
            compression=compression,
            downlink_compression=downlink_compression,
            seed_model_id=seed.id,
            model_id=seed.id,
        )
        check_session_capacity(ctx.state, ctx.max_pending_sessions)
        ctx.state.put_session(session)
        ctx.record("session.create", f"session {session.id}", detail=f"{session.rounds} rounds from model {seed.id}")
        if ctx.controller is not None:
            ctx.controller.wake()
        logger.info(
            "session %s created: %d rounds (%s) from model %s", session.id, session.rounds, session.mode, seed.id
        )
        return jsonify(record_to_rest(session)), 201

    @api.get("/sessions")
    def list_sessions():
        page = parse(OffsetPage, request.args)
        records = ctx.state.list_sessions(limit=page.limit + 1, offset=page.offset, after=page.after)
        return _items(records, page, ctx.state.count_sessions())

    @api.get("/sessions/<session_id>")
    def get_session(session_id: str):
        return jsonify(record_to_rest(ctx.state.get_session(session_id)))

    @api.get("/sessions/<session_id>/rounds")
    def list_rounds(session_id: str):
        page = parse(Page, request.args)
        ctx.state.get_session(session_id)
        records = ctx.state.list_rounds(session_id, limit=page.limit + 1, after=page.after)
        return _items([visible_round(r) for r in records], page, ctx.state.count_rounds(session_id))

    @api.get("/rounds/<round_id>")
    def get_round(round_id: str):
        return jsonify(record_to_rest(visible_round(ctx.state.get_round(round_id))))

    @api.post("/sessions/<session_id>/stop")
    def stop_session(session_id: str):
        principal = caller()
        by = principal.subject if principal else "anonymous"
        if ctx.controller is None:
            raise FailedPrecondition("this reducer runs no controller: sessions cannot be stopped here")
        session = ctx.controller.request_stop(session_id, by)
        ctx.record("session.stop", f"session {session_id}", detail=f"status {session.status.value}")
        return jsonify(record_to_rest(session)), 202

    return api


def visible_round(round_: Round) -> Round:
    """A round as the caller may see it: each client's own evaluation only for admins (only aggregates
    are exposed otherwise, DESIGN §9)."""
    principal = caller()
    if round_.evaluation is None or not round_.evaluation.per_client or principal is None:
        return round_  # no tokens (a loopback federation): everyone is an admin
    if principal.role == Role.ADMIN:
        return round_
    return round_.model_copy(update={"evaluation": round_.evaluation.model_copy(update={"per_client": []})})


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
