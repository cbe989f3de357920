"""RPC metrics: every call is counted by method and the status it ended with, refused ones too."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from prometheus_client import CollectorRegistry

from fedn.auth.rpc import AuthInterceptor
from fedn.metrics_grpc import RpcMetrics, RpcMetricsInterceptor

SERVICE = "fedn.v1.Combiner"


async def _ok(request: bytes, context) -> bytes:
    return request


async def _abort(request: bytes, context) -> bytes:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad update")


async def _crash(request: bytes, context) -> bytes:
    raise RuntimeError("bug")


async def _stream(request: bytes, context):
    for i in range(3):
        yield bytes([i])


def _count(metrics: RpcMetrics, method: str, code: str) -> float:
    return metrics.calls.labels(method, code)._value.get()


async def _serve_and_call(metrics: RpcMetrics) -> dict[str, grpc.StatusCode]:
    handlers = {
        "AnnounceModel": grpc.unary_unary_rpc_method_handler(_ok),
        "UploadUpdate": grpc.unary_unary_rpc_method_handler(_abort),
        "ReportFailure": grpc.unary_unary_rpc_method_handler(_crash),
        "DownloadModel": grpc.unary_stream_rpc_method_handler(_stream),
        "NotInThePolicy": grpc.unary_unary_rpc_method_handler(_ok),
    }
    server = grpc.aio.server(interceptors=[RpcMetricsInterceptor(metrics), AuthInterceptor(None)])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    codes: dict[str, grpc.StatusCode] = {}
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for name in ("AnnounceModel", "UploadUpdate", "ReportFailure", "NotInThePolicy", "Missing"):
                try:
                    await channel.unary_unary(f"/{SERVICE}/{name}")(b"x", timeout=10)
                    codes[name] = grpc.StatusCode.OK
                except grpc.aio.AioRpcError as exc:
                    codes[name] = exc.code()
            assert [m async for m in channel.unary_stream(f"/{SERVICE}/DownloadModel")(b"", timeout=10)] == [
                b"\x00",
                b"\x01",
                b"\x02",
            ]
    finally:
        await server.stop(None)
    return codes


def test_calls_are_counted_by_method_and_status():
    metrics = RpcMetrics(
        CollectorRegistry(), "fedn_test", ["AnnounceModel", "UploadUpdate", "ReportFailure", "DownloadModel"]
    )
    codes = asyncio.run(_serve_and_call(metrics))
    assert codes == {
        "AnnounceModel": grpc.StatusCode.OK,
        "UploadUpdate": grpc.StatusCode.INVALID_ARGUMENT,
        "ReportFailure": grpc.StatusCode.UNKNOWN,
        "NotInThePolicy": grpc.StatusCode.PERMISSION_DENIED,
        "Missing": grpc.StatusCode.UNIMPLEMENTED,
    }
    assert _count(metrics, "AnnounceModel", "OK") == 1
    assert _count(metrics, "UploadUpdate", "INVALID_ARGUMENT") == 1
    assert _count(metrics, "ReportFailure", "UNKNOWN") == 1
    assert _count(metrics, "DownloadModel", "OK") == 1
    # a method the service does not name is "other", whatever the caller sent: labels stay a fixed set
    assert _count(metrics, "other", "PERMISSION_DENIED") == 1
    assert _count(metrics, "other", "UNIMPLEMENTED") == 1
    assert metrics.seconds.labels("AnnounceModel")._sum.get() > 0


@pytest.mark.parametrize(("method", "label"), [("/fedn.v1.Combiner/RunRound", "RunRound"), ("/x.Y/RunRound2", "other")])
def test_method_labels_come_from_the_service(method, label):
    assert RpcMetrics(CollectorRegistry(), "fedn_t", ["RunRound"]).label(method) == label
