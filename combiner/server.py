"""The combiner process: a grpc.aio server plus its link to the reducer (register, heartbeats)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile

import grpc

from combiner.clients import ClientHub
from combiner.model_cache import ModelCache
from combiner.router import RunRouter
from combiner.run import RunContext
from combiner.servicer import CombinerServicer
from combiner.settings import CombinerSettings
from combiner.staging import UploadStager
from combiner.stragglers import Stragglers
from fedn.api_client import ReducerAPI
from fedn.audit import AuditLog
from fedn.auth.rpc import AuthInterceptor
from fedn.auth.tokens import TokenVerifier, load_public_key
from fedn.clock import Clock, SystemClock
from fedn.errors import FednError, InvalidArgument, NotFound
from fedn.metrics import CombinerMetrics
from fedn.metrics_grpc import RpcMetricsInterceptor
from fedn.metrics_http import MetricsEndpoint
from fedn.store.base import ModelStore
from fedn.tls import TLSFiles, check_exposure, server_credentials, server_ssl_context

__all__ = ["CombinerServer", "max_concurrent_rpcs", "run_context", "server_options"]

logger = logging.getLogger(__name__)
MAX_AUDIT_PER_HEARTBEAT = 100  # events sent with one heartbeat; the reducer takes no more (HeartbeatRequest)


def _check_spool_dir(directory: str | None) -> None:
    """Fail at start, not at the first large upload, if updates cannot be spooled where configured."""
    try:
        tempfile.TemporaryFile(dir=directory).close()
    except OSError as exc:
        where = directory or tempfile.gettempdir()
        raise FednError(f"cannot write temporary files in the spool directory {where!r} (--spool-dir): {exc}") from exc


def server_options(settings: CombinerSettings) -> list[tuple[str, int]]:
    """The gRPC server's channel options: message sizes, keepalive, the backlog of calls not yet handled,
    and when connections are closed."""
    s = settings
    message_limit = max(2 * s.chunk_bytes, 4 << 20)
    # Calls that arrive faster than the server takes them wait in gRPC core's backlog; past 1000 of them
    # core drops new ones at random, and past 3000 all of them (the client sees CANCELLED). When
    # thousands of clients (re)connect at once, a burst bigger than that is normal: let the backlog
    # hold every call the server would accept anyway (max_concurrent_rpcs bounds memory).
    backlog = max_concurrent_rpcs(s)
    options = [
        ("grpc.max_receive_message_length", message_limit),
        ("grpc.max_send_message_length", message_limit),
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.server.max_pending_requests", backlog),
        ("grpc.server.max_pending_requests_hard_limit", backlog),
        ("grpc.so_reuseport", 0),
        ("grpc.http2.bdp_probe", int(s.http2_bdp_probe)),
    ]
    if s.max_connection_idle_s > 0:
        options.append(("grpc.max_connection_idle_ms", int(s.max_connection_idle_s * 1000)))
    if s.max_connection_age_s > 0:
        options.append(("grpc.max_connection_age_ms", int(s.max_connection_age_s * 1000)))
        options.append(("grpc.max_connection_age_grace_ms", int(s.transfer_grace_s * 1000)))
    return options


def max_concurrent_rpcs(settings: CombinerSettings) -> int:
    """Calls in flight: each client's task stream plus one short call each, and room for the reducer."""
    return settings.max_concurrent_rpcs or 2 * settings.max_clients + 64


def run_context(
    settings: CombinerSettings, models: ModelStore, clock: Clock, metrics: CombinerMetrics | None = None
) -> RunContext:
    """The clients, model cache and upload staging a combiner with ``settings`` gives its runs."""
    s = settings
    metrics = metrics if metrics is not None else CombinerMetrics()
    return RunContext(
        combiner_id=s.name,
        clients=ClientHub(
            clock,
            max_clients=s.max_clients,
            metrics=metrics,
            heartbeat_interval_s=s.heartbeat_interval_s,
            max_heartbeats_per_s=s.max_heartbeats_per_s,
        ),
        models=ModelCache(
            models,
            clock,
            model_cache_bytes=s.model_cache_bytes,
            chunk_bytes=s.chunk_bytes,
            max_concurrent_downloads=s.max_concurrent_downloads,
            max_download_bytes=s.max_download_bytes,
            grant_timeout_s=s.upload_grant_timeout_s,
            min_transfer_bytes_per_s=s.min_transfer_bytes_per_s,
            transfer_grace_s=s.transfer_grace_s,
            metrics=metrics,
        ),
        stager=UploadStager(
            clock,
            max_update_bytes=s.max_update_bytes,
            max_concurrent_uploads=s.max_concurrent_uploads,
            max_staged_bytes=s.max_staged_bytes,
            grant_timeout_s=s.upload_grant_timeout_s,
            spool_over_bytes=s.spool_over_bytes,
            spool_dir=s.spool_dir,
            max_num_examples=s.max_num_examples,
            min_transfer_bytes_per_s=s.min_transfer_bytes_per_s,
            transfer_grace_s=s.transfer_grace_s,
            metrics=metrics,
        ),
        clock=clock,
        stragglers=Stragglers(s.straggler_backoff_rounds, s.straggler_backoff_max_rounds),
        store_retry_grace_s=s.store_retry_grace_s,
        metrics=metrics,
    )


class CombinerServer:
    """Serves the Combiner gRPC service; ``reducer=None`` runs it without a reducer (tests)."""

    def __init__(
        self,
        settings: CombinerSettings,
        models: ModelStore,
        reducer: ReducerAPI | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self._models = models
        self._reducer = reducer
        self._clock = clock or SystemClock()
        self._server: grpc.aio.Server | None = None
        self._link: asyncio.Task | None = None
        self._heartbeats: asyncio.Task | None = None
        self._stopping: asyncio.Event | None = None
        self.rounds: RunRouter | None = None
        self.port = 0
        self.verifier: TokenVerifier | None = None
        self.metrics = CombinerMetrics()
        self._metrics_endpoint: MetricsEndpoint | None = None
        # a combiner keeps no state: its audit events are log lines, sent on to the reducer with heartbeats
        self.audit = AuditLog(None, self._clock, ship=reducer is not None, max_pending=1000)

    @property
    def address(self) -> str:
        s = self.settings
        return f"{s.advertise_host or s.host}:{s.advertise_port or self.port}"

    async def start(self) -> None:
        s = self.settings
        _check_spool_dir(s.spool_dir)
        tls = TLSFiles(s.tls_cert, s.tls_key, s.ca_file, s.client_ca)
        tls.check()
        if s.token_public_key:
            self.verifier = TokenVerifier(load_public_key(s.token_public_key, "--token-public-key"))
        check_exposure(
            s.host, tls=tls.has_identity, auth=self.verifier is not None, insecure=s.insecure, service="combiner"
        )
        ctx = run_context(s, self._models, self._clock, self.metrics)
        self.rounds = RunRouter(ctx)
        if s.metrics_port is not None:  # before gRPC: a port in use fails the start with nothing to undo
            await self._start_metrics(tls)
        self._server = grpc.aio.server(
            interceptors=[
                RpcMetricsInterceptor(self.metrics.rpcs),  # first: refused calls are counted too
                AuthInterceptor(
                    self.verifier,
                    on_denied=self._denied,
                    check_certificate_name=bool(s.client_ca),  # only mutual TLS brings a client certificate
                ),
            ],
            options=server_options(s),
            maximum_concurrent_rpcs=max_concurrent_rpcs(s),
        )
        CombinerServicer(self.rounds, ctx.models, self.audit).add_to_server(self._server)
        address = f"{s.host}:{s.port}"
        if tls.has_identity:
            assert s.tls_cert and s.tls_key
            self.port = self._server.add_secure_port(address, server_credentials(s.tls_cert, s.tls_key, s.client_ca))
        else:
            self.port = self._server.add_insecure_port(address)
        if self.port == 0:
            raise FednError(f"cannot bind {s.host}:{s.port}")
        await self._server.start()
        logger.info(
            "combiner %s listening on %s:%d (advertised as %s; %s, %s)",
            s.name,
            s.host,
            self.port,
            self.address,
            ("mutual TLS" if s.client_ca else "TLS") if tls.has_identity else "plaintext",
            "tokens required" if self.verifier else "no tokens",
        )
        self._stopping = asyncio.Event()
        self._heartbeats = asyncio.create_task(ctx.clients.send_heartbeats())
        if self._reducer is not None:
            self._link = asyncio.create_task(self._reducer_link())

    @property
    def metrics_port(self) -> int:
        """The bound metrics port (0 when metrics are off)."""
        return self._metrics_endpoint.port if self._metrics_endpoint is not None else 0

    async def _start_metrics(self, tls: TLSFiles) -> None:
        """The metrics endpoint on the combiner's host: HTTPS with its certificate and tokens checked when
        those are on, refused on a non-loopback host in plaintext as gRPC is (the check ran above)."""
        s = self.settings
        has_tls = tls.has_identity and s.tls_cert and s.tls_key
        ssl_context = server_ssl_context(s.tls_cert, s.tls_key) if has_tls else None
        endpoint = MetricsEndpoint(
            self.metrics.registry,
            s.host,
            s.metrics_port or 0,
            ssl_context=ssl_context,
            verifier=self.verifier,
            on_denied=lambda peer, error: self._denied("GET /metrics", peer, "", error),
        )
        await endpoint.start()
        self._metrics_endpoint = endpoint

    def _denied(self, method: str, peer: str, subject: str, error: FednError) -> None:
        self.audit.record(
            "auth.denied", subject=subject, role="", peer=peer, target=method, outcome="denied", detail=error.message
        )

    async def _reducer_link(self) -> None:
        """Register, then heartbeat with the connected clients; survive the reducer being away."""
        assert self._reducer is not None and self.rounds is not None and self._stopping is not None
        registered = False
        reducer_down = False
        # Until the first registration, retry after 50 ms doubling to the heartbeat interval: a combiner
        # started beside its reducer (`fedn local`) registers as soon as the reducer answers.
        first_retry_s = 0.05
        ever_registered = False
        while not self._stopping.is_set():
            try:
                if not registered:
                    await asyncio.to_thread(self._reducer.register_combiner, self.settings.name, self.address)
                    registered = ever_registered = True
                    logger.info("registered with the reducer as %s at %s", self.settings.name, self.address)
                events = self.audit.take(MAX_AUDIT_PER_HEARTBEAT)
                try:
                    answer = await asyncio.to_thread(
                        self._reducer.combiner_heartbeat, self.settings.name, self.rounds.connected_client_ids(), events
                    )
                except InvalidArgument:  # the reducer refused the heartbeat as it was: do not send it again
                    if events:
                        logger.warning("the reducer refused %d audit events; they stay in this log only", len(events))
                    raise
                except BaseException:
                    self.audit.give_back(events)
                    raise
                self._shed(answer.get("shed", 0))
                if self.verifier is not None:
                    self.verifier.set_revoked(answer.get("revoked", ()))
                if reducer_down:
                    logger.info("reducer reachable again")
                reducer_down = False
            except NotFound:
                registered = False
                continue
            except FednError as exc:
                if not reducer_down:
                    logger.warning("reducer unreachable, will keep trying: %s", exc.message)
                reducer_down = True
            wait_s = self.settings.heartbeat_interval_s
            if not ever_registered:
                wait_s, first_retry_s = min(first_retry_s, wait_s), first_retry_s * 2
            with contextlib.suppress(TimeoutError):
                await self._clock.wait_for(self._stopping.wait(), wait_s)

    def _shed(self, count: int) -> None:
        """The reducer's word that this combiner holds more than its share: end the streams of up to
        ``count`` idle clients (none a run holds), which ask the reducer again and go elsewhere. Called
        once per heartbeat, so at most one shed per heartbeat interval."""
        assert self.rounds is not None
        if count <= 0:
            return
        idle = self.rounds.idle_client_ids()
        shed = self.rounds.context.clients.shed(idle[:count])
        if len(shed) < count:
            logger.info("rebalancing: asked to shed %d clients, %d were idle", count, len(shed))

    async def wait(self) -> None:
        assert self._server is not None
        await self._server.wait_for_termination()

    async def stop(self, grace_s: float = 5.0) -> None:
        if self._stopping is not None:
            self._stopping.set()
        if self.rounds is not None:
            self.rounds.close()
        for task in (self._link, self._heartbeats):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._metrics_endpoint is not None:
            await self._metrics_endpoint.stop()
        if self._server is not None:
            await self._server.stop(grace_s)
        logger.info("combiner %s stopped", self.settings.name)
