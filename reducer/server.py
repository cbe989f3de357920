"""The reducer process: stores, registry, controller and the REST API (on :mod:`reducer.http_server`)."""

from __future__ import annotations

import logging

from fedn.audit import AuditLog
from fedn.auth.tokens import Role, TokenIssuer, TokenVerifier, bearer_token, load_private_key
from fedn.clock import SystemClock
from fedn.errors import FednError
from fedn.records import NodeStatus
from fedn.store import open_model_store, open_state_store
from fedn.store.redact import redact_url
from fedn.tls import TLSFiles, check_exposure, server_ssl_context
from reducer.api import ApiContext
from reducer.app import create_app
from reducer.auth import ReducerAuth
from reducer.controller import Controller
from reducer.events import EventHub
from reducer.gateway import GrpcCombinerGateway
from reducer.gc import GarbageCollector
from reducer.http_errors import HttpError
from reducer.http_server import HttpLimits, HttpServer
from reducer.registry import CombinerRegistry
from reducer.settings import ReducerSettings

__all__ = ["ReducerServer"]

logger = logging.getLogger(__name__)


class ReducerServer:
    """Owns everything the reducer runs; ``start()`` opens and starts, ``stop()`` undoes it."""

    def __init__(self, settings: ReducerSettings) -> None:
        self.settings = settings
        self.port = 0
        self._server: HttpServer | None = None
        self._controller: Controller | None = None
        self._gc: GarbageCollector | None = None
        self._gateway: GrpcCombinerGateway | None = None
        self._events: EventHub | None = None
        self._stores: list = []

    @property
    def url(self) -> str:
        scheme = "https" if self.settings.tls_cert else "http"
        return f"{scheme}://{self.settings.host}:{self.port}"

    def start(self) -> None:
        s = self.settings
        tls_on, auth_on = bool(s.tls_cert and s.tls_key), bool(s.token_signing_key)
        check_exposure(s.host, tls=tls_on, auth=auth_on, insecure=s.insecure, service="reducer")
        state = open_state_store(s.state)
        models = open_model_store(s.models)
        self._stores = [state, models]
        clock = SystemClock()  # one clock judges liveness, waits and deadlines alike
        registry = CombinerRegistry(
            state,
            combiner_timeout_s=s.combiner_timeout_s,
            clock=clock,
            rebalance=s.rebalance,
            rebalance_interval_s=s.rebalance_interval_s,
            max_combiners=s.max_combiners,
            max_clients_per_combiner=s.max_clients_per_combiner,
        )
        registry.load()
        auth = None
        if s.token_signing_key:
            key = load_private_key(s.token_signing_key, "--token-signing-key")
            auth = ReducerAuth(state, TokenIssuer(key), TokenVerifier(key.public_key()))
        audit = AuditLog(state, clock)
        audit.prune(s.audit_retention_days)  # and after every garbage collection
        self._gateway = GrpcCombinerGateway(
            tls=self._combiner_tls(), token=auth.own_token if auth is not None else None
        )
        self._controller = Controller(
            state,
            models,
            registry,
            self._gateway,
            rpc_grace_s=s.rpc_grace_s,
            resume_wait_s=s.resume_wait_s,
            max_session_errors=s.max_session_errors,
            round_retries=s.round_retries,
            max_num_examples=s.max_num_examples,
            max_clients_per_combiner=s.max_clients_per_combiner,
            clock=clock,
        )
        if s.gc_interval_s > 0:
            self._gc = GarbageCollector(
                state,
                models,
                grace_s=s.gc_grace_s,
                interval_s=s.gc_interval_s,
                clock=clock,
                after_pass=lambda: audit.prune(s.audit_retention_days),
            )
        self._events = EventHub(state, max_subscribers=s.max_event_streams)  # the dashboard's live view
        app = create_app(
            ApiContext(
                state,
                models,
                registry,
                self._controller,
                max_model_bytes=s.max_model_bytes,
                max_json_bytes=s.max_json_bytes,
                max_pending_sessions=s.max_pending_sessions,
                auth=auth,
                audit=audit,
            ),
            self._events,
        )
        self._server = self._http_server(app, auth)
        self._server.start()
        self.port = self._server.port
        self._controller.start()
        self._events.start()
        if self._gc is not None:
            self._gc.start()
        logger.info(
            "reducer listening on %s (state %s, models %s, %s)",
            self.url,
            redact_url(s.state),
            redact_url(s.models),
            f"{sum(c.status == NodeStatus.ONLINE for c in state.list_combiners())} combiners online",
        )

    def _combiner_tls(self) -> TLSFiles | None:
        """TLS to combiners when a CA is given; the reducer's certificate then serves mutual TLS too."""
        s = self.settings
        return TLSFiles(cert_file=s.tls_cert, key_file=s.tls_key, ca_file=s.ca_file) if s.ca_file else None

    def _http_server(self, app, auth: ReducerAuth | None) -> HttpServer:
        """The REST server: HTTPS when a certificate is given (mutual TLS with a client CA), bounded per client."""
        s = self.settings
        files = TLSFiles(cert_file=s.tls_cert, key_file=s.tls_key, client_ca_file=s.client_ca)
        files.check()  # half a pair, or a client CA without a certificate, fails at start-up
        ssl_context = server_ssl_context(s.tls_cert, s.tls_key, s.client_ca) if files.has_identity else None
        limits = HttpLimits(
            max_connections=s.max_connections,
            idle_timeout_s=s.idle_timeout_s,
            read_timeout_s=s.read_timeout_s,
            min_body_rate=s.min_body_rate,
            large_body_bytes=s.max_json_bytes,
            max_large_bodies=s.max_uploads,
        )

        def body_limit(method: str, path: str, environ: dict) -> int:
            """Only a model upload is larger than a JSON document, and only an admin's is received: the
            token is checked on the head, so a stranger cannot make the reducer take in a gigabyte."""
            if (method, path) != ("POST", "/api/v1/models"):
                return s.max_json_bytes
            if auth is not None:
                try:
                    # on the event loop: no store read here (revocations as last read); the hook checks again
                    principal = auth.verifier.verify(bearer_token(environ.get("HTTP_AUTHORIZATION")))
                except FednError as exc:
                    raise HttpError(401, exc.message) from None
                if principal.role != Role.ADMIN:
                    raise HttpError(403, f"POST {path} needs the role admin, not {principal.role}")
            return s.max_model_bytes

        return HttpServer(
            app, s.host, s.port, threads=s.threads, limits=limits, body_limit=body_limit, ssl_context=ssl_context
        )

    def stop(self) -> None:
        if self._events is not None:
            self._events.stop()  # ends every event stream, so the HTTP server stops at once
        if self._server is not None:
            self._server.stop()
        if self._gateway is not None:
            self._gateway.close()  # ends in-flight RunRound calls at once
        if self._controller is not None:
            self._controller.stop()
        if self._gc is not None:
            self._gc.stop()
        for store in self._stores:
            store.close()
        logger.info("reducer stopped")
