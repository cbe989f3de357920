"""gRPC status for every combiner method, unary and streaming, mapped in one place.

A :class:`~fedn.errors.FednError` becomes its ``grpc_status`` and message; anything else is
INTERNAL with a request id, and its traceback goes to the log only.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import uuid
from collections.abc import Callable
from typing import TypeVar

import grpc

from fedn.errors import FednError

__all__ = ["map_errors"]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable)


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
                async with contextlib.aclosing(method(self, request, context)) as responses:
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
            return await method(self, request, context)
        except passthrough:
            raise
        except Exception as exc:
            await _abort(name, exc, context)

    return unary  # type: ignore[return-value]
