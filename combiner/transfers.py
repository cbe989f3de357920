"""Server-side deadlines on downloads and uploads, so a slow or stalled peer cannot hold a slot forever.

A transfer of ``n`` bytes must finish within ``grace_s + n / min_bytes_per_s`` from when it took its
slot. A client that stops reading a download, or trickles an upload, otherwise keeps one of the few
download streams or upload slots of a large model (and the bytes staged for it) for as long as it
likes, and every other client waits behind it. The deadline runs on the injected clock; when it
passes, the task doing the transfer is cancelled, which releases whatever it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Protocol

import grpc

from fedn.clock import Clock, TimerHandle
from fedn.errors import DeadlineExceeded

__all__ = ["Abortable", "TransferCutoff", "TransferLimits"]

logger = logging.getLogger(__name__)

DEFAULT_MIN_BYTES_PER_S = 64 * 1024
DEFAULT_GRACE_S = 30.0


class TransferLimits:
    """The slowest rate a transfer may keep, and the grace on top (connection set-up, a slow start)."""

    def __init__(self, min_bytes_per_s: float = DEFAULT_MIN_BYTES_PER_S, grace_s: float = DEFAULT_GRACE_S) -> None:
        if min_bytes_per_s <= 0 or grace_s < 0:
            raise ValueError("min_bytes_per_s must be positive and grace_s not negative")
        self.min_bytes_per_s = min_bytes_per_s
        self.grace_s = grace_s

    def allowed_s(self, nbytes: int) -> float:
        return self.grace_s + max(0, nbytes) / self.min_bytes_per_s

    def cutoff(self, clock: Clock, what: str, nbytes: int, *, context: Abortable | None = None) -> TransferCutoff:
        return TransferCutoff(clock, what, self.allowed_s(nbytes), nbytes, context=context)


class Abortable(Protocol):
    """What a cutoff needs of a call's context (``grpc.aio.ServicerContext`` is one)."""

    def abort(self, code: grpc.StatusCode, details: str) -> Awaitable[None]: ...


class TransferCutoff:
    """Cancel the task it is entered in once ``allowed_s`` passed on ``clock``.

    Where the cancellation reaches code inside the block (an upload waiting for its next chunk), it
    leaves the block as :class:`~fedn.errors.DeadlineExceeded` with a message that says why. Where it
    reaches the task elsewhere (gRPC waiting to send a download chunk the client does not read), the
    call ends there and the block is closed on the way out; since gRPC does not end a call whose handler
    was cancelled (it would linger until the client's own deadline, if any), the call's ``context`` is
    aborted with DEADLINE_EXCEEDED and the message as well.
    """

    def __init__(
        self, clock: Clock, what: str, allowed_s: float, nbytes: int, *, context: Abortable | None = None
    ) -> None:
        self._clock = clock
        self.what = what
        self.allowed_s = allowed_s
        self.nbytes = nbytes
        self.expired = False
        self._task: asyncio.Task | None = None
        self._timer: TimerHandle | None = None
        self._context = context
        self._aborting: asyncio.Task | None = None

    @property
    def message(self) -> str:
        return (
            f"{self.what} not finished within {self.allowed_s:.0f}s ({self.nbytes} bytes at the minimum rate the "
            "combiner allows, plus grace): cut off to free its slot"
        )

    def __enter__(self) -> TransferCutoff:
        self._task = asyncio.current_task()
        self._timer = self._clock.call_later(self.allowed_s, self._cut)
        return self

    def _cut(self) -> None:
        self._timer = None
        if self._task is None or self._task.done():
            return
        self.expired = True
        logger.warning("%s", self.message)
        if self._context is not None:
            self._aborting = asyncio.get_running_loop().create_task(self._abort(self._context.abort))
        self._task.cancel(self.message)

    async def _abort(self, abort: Callable[[grpc.StatusCode, str], Awaitable[None]]) -> None:
        with contextlib.suppress(Exception):  # AbortError is how it succeeds
            await abort(DeadlineExceeded.grpc_status, self.message)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.expired and exc_type is asyncio.CancelledError and self._task is not None:
            self._task.uncancel()
            raise DeadlineExceeded(self.message) from None
