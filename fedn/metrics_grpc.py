"""RPC metrics of a gRPC server: calls by method and status code, and how long the answered ones took.

One server interceptor, placed before the authentication interceptor, so refused calls
(``UNAUTHENTICATED``, ``PERMISSION_DENIED``) are counted with the rest. Method labels come from the
service's own method names (anything else is ``other``) and codes from ``grpc.StatusCode``, so the
registry does not grow with what callers send.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["RpcMetrics", "RpcMetricsInterceptor"]

# Seconds an answered call takes: from a heartbeat-sized reply to a large upload.
_RPC_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 120.0, 600.0)


class RpcMetrics:
    """The RPC counters of one service (``prefix`` names it: ``fedn_combiner``)."""

    def __init__(self, registry: CollectorRegistry, prefix: str, methods: Iterable[str]) -> None:
        self.methods = frozenset(methods)
        self.calls = Counter(
            f"{prefix}_rpcs", "RPCs ended, by method and gRPC status code", ["method", "code"], registry=registry
        )
        self.seconds = Histogram(
            f"{prefix}_rpc_seconds",
            "Seconds from a call's start to its answer (calls with one answer; streams of tasks are not timed)",
            ["method"],
            buckets=_RPC_BUCKETS,
            registry=registry,
        )
        for method in sorted(self.methods):
            self.calls.labels(method, grpc.StatusCode.OK.name)  # present from the start, at 0

    def label(self, full_method: str) -> str:
        """``/fedn.v1.Combiner/UploadUpdate`` -> ``UploadUpdate``; an unknown method -> ``other``."""
        name = full_method.rsplit("/", 1)[-1]
        return name if name in self.methods else "other"


def _code(context: grpc.aio.ServicerContext, error: BaseException | None) -> str:
    """The status the caller got: what the handler set or aborted with, else OK, CANCELLED or UNKNOWN."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if error is None:
        return grpc.StatusCode.OK.name
    return grpc.StatusCode.CANCELLED.name if isinstance(error, asyncio.CancelledError) else grpc.StatusCode.UNKNOWN.name


class RpcMetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every call of the server it is given to, by method and the status it ended with."""

    def __init__(self, metrics: RpcMetrics) -> None:
        self._metrics = metrics

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            self._metrics.calls.labels("other", grpc.StatusCode.UNIMPLEMENTED.name).inc()
            return None
        method = self._metrics.label(handler_call_details.method)
        if handler.unary_unary is not None:
            return handler._replace(unary_unary=self._answering(handler.unary_unary, method))
        if handler.stream_unary is not None:
            return handler._replace(stream_unary=self._answering(handler.stream_unary, method))
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=self._streaming(handler.unary_stream, method))
        return handler._replace(stream_stream=self._streaming(handler.stream_stream, method))

    def _answering(self, inner, method: str):
        metrics = self._metrics

        async def handler(request, context):
            started, error = time.perf_counter(), None
            try:
                return await inner(request, context)
            except BaseException as exc:
                error = exc
                raise
            finally:
                metrics.calls.labels(method, _code(context, error)).inc()
                metrics.seconds.labels(method).observe(time.perf_counter() - started)

        return handler

    def _streaming(self, inner, method: str):
        metrics = self._metrics

        async def handler(request, context):
            error = None
            try:
                async for message in inner(request, context):
                    yield message
            except BaseException as exc:
                error = exc
                raise
            finally:
                metrics.calls.labels(method, _code(context, error)).inc()

        return handler
