"""gRPC status for every combiner method, unary and streaming, mapped in one place.

A :class:`~fedn.errors.FednError` becomes its ``grpc_status`` and message; anything else is
INTERNAL with a request id, and its traceback goes to the log only. A request message that does not
parse (:func:`tolerant`) is INVALID_ARGUMENT, as any other malformed input, not gRPC's UNKNOWN.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc
from google.protobuf.message import DecodeError

from fedn.errors import FednError, InvalidArgument

__all__ = ["Undecodable", "decoded", "map_errors", "tolerant"]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable)
M = TypeVar("M")


@dataclass(frozen=True)
class Undecodable:
    """Stands in for a request message whose bytes did not parse; :func:`decoded` refuses it."""

    error: str


def tolerant(deserializer: Callable[[bytes], M]) -> Callable[[bytes], M | Undecodable]:
    """``deserializer`` that hands the method an :class:`Undecodable` instead of raising: gRPC would answer
    a parse error with UNKNOWN and log a traceback, before any handler of ours could map it."""

    def deserialize(data: bytes) -> M | Undecodable:
        try:
            return deserializer(data)
        except DecodeError as exc:
            return Undecodable(str(exc)[:200])

    return deserialize


def decoded(message: M | Undecodable) -> M:
    """``message``, or InvalidArgument if it did not parse."""
    if isinstance(message, Undecodable):
        raise InvalidArgument(f"malformed request message: {message.error}")
    return message


async def _abort(name: str, exc: Exception, context: grpc.aio.ServicerContext) -> None:
    if isinstance(exc, FednError):
        logger.info("%s refused: %s", name, exc.message)
        await context.abort(exc.grpc_status, exc.message)
    request_id = uuid.uuid4().hex[:12]
    logger.error("%s failed (request %s)", name, request_id, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error (request {request_id})")


def map_errors(method: F) -> F:
    """Wrap a servicer method (a coroutine, or an async generator for a streaming response)."""
    name = method.__name__
    # a cancelled call or an abort already on its way out is not an error of ours
    passthrough = (asyncio.CancelledError, grpc.aio.AbortError)

    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream(self, request, context: grpc.aio.ServicerContext):
            try:
                # closed here, not whenever it is collected: its cleanup (a client's disconnect) runs now
                async with contextlib.aclosing(method(self, decoded(request), context)) as responses:
                    async for response in responses:
                        yield response
            except passthrough:
                raise
            except Exception as exc:
                await _abort(name, exc, context)

        return stream  # type: ignore[return-value]

    @functools.wraps(method)
    async def unary(self, request, context: grpc.aio.ServicerContext):
        try:
            # a request stream passes as it is: its messages are checked as they are read
            return await method(self, decoded(request), context)
        except passthrough:
            raise
        except Exception as exc:
            await _abort(name, exc, context)

    return unary  # type: ignore[return-value]
