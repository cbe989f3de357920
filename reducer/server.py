"""The reducer process: stores, registry, controller and the REST API on waitress."""

from __future__ import annotations

import logging
import threading

from waitress.server import create_server

from fedn.clock import SystemClock
from fedn.records import NodeStatus
from fedn.store import open_model_store, open_state_store
from fedn.store.redact import redact_url
from reducer.api import ApiContext
from reducer.app import create_app
from reducer.controller import Controller
from reducer.gateway import GrpcCombinerGateway
from reducer.gc import GarbageCollector
from reducer.http_errors import JsonErrorChannel
from reducer.registry import CombinerRegistry
from reducer.settings import ReducerSettings

__all__ = ["ReducerServer"]

logger = logging.getLogger(__name__)


class ReducerServer:
    """Owns everything the reducer runs; ``start()`` opens and starts, ``stop()`` undoes it."""

    def __init__(self, settings: ReducerSettings) -> None:
        self.settings = settings
        self.port = 0
        self._server = None
        self._thread: threading.Thread | None = None
        self._controller: Controller | None = None
        self._gc: GarbageCollector | None = None
        self._gateway: GrpcCombinerGateway | None = None
        self._stores: list = []

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.port}"

    def start(self) -> None:
        s = self.settings
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
        )
        registry.load()
        self._gateway = GrpcCombinerGateway()
        self._controller = Controller(
            state,
            models,
            registry,
            self._gateway,
            rpc_grace_s=s.rpc_grace_s,
            resume_wait_s=s.resume_wait_s,
            max_session_errors=s.max_session_errors,
            round_retries=s.round_retries,
            clock=clock,
        )
        if s.gc_interval_s > 0:
            self._gc = GarbageCollector(state, models, grace_s=s.gc_grace_s, interval_s=s.gc_interval_s, clock=clock)
        app = create_app(ApiContext(state, models, registry, self._controller, max_model_bytes=s.max_model_bytes))
        self._server = create_server(app, host=s.host, port=s.port, threads=s.threads, ident="fedn")
        self._server.channel_class = JsonErrorChannel
        self.port = self._server.effective_port
        self._thread = threading.Thread(target=self._server.run, name="waitress", daemon=True)
        self._thread.start()
        self._controller.start()
        if self._gc is not None:
            self._gc.start()
        logger.info(
            "reducer listening on %s (state %s, models %s, %s)",
            self.url,
            redact_url(s.state),
            redact_url(s.models),
            f"{sum(c.status == NodeStatus.ONLINE for c in state.list_combiners())} combiners online",
        )

    def stop(self) -> None:
        if self._server is not None:
            server = self._server

            def close_all() -> None:  # runs in the server's own loop, so no select() sees a closed socket
                for channel in list(server._map.values()):
                    channel.close()

            server.trigger.pull_trigger(close_all)
            if self._thread is not None:
                self._thread.join(5)
            server.task_dispatcher.shutdown(timeout=5)
        if self._gateway is not None:
            self._gateway.close()  # ends in-flight RunRound calls at once
        if self._controller is not None:
            self._controller.stop()
        if self._gc is not None:
            self._gc.stop()
        for store in self._stores:
            store.close()
        logger.info("reducer stopped")
