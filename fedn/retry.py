"""Retrying a call that failed for a passing reason (a store outage) until a deadline on the injected clock.

Back-off doubles from ``first_delay_s`` up to ``max_delay_s``, each delay drawn between half and all of
its value (jitter, so many callers that failed together do not retry together), and the last attempt
is made at the deadline itself. A permanent error (anything not in ``retry_on``) is raised at once.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from fedn.clock import Clock
from fedn.errors import FednError, StoreError

__all__ = ["retry"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


async def retry(
    call: Callable[[], Awaitable[T]],
    *,
    deadline: float,
    clock: Clock,
    what: str,
    retry_on: tuple[type[FednError], ...] = (StoreError,),
    first_delay_s: float = 0.25,
    max_delay_s: float = 5.0,
    rng: Callable[[], float] = random.random,
) -> T:
    """``await call()``, again after each failure in ``retry_on`` until ``deadline`` (``clock.now()``
    scale); the last failure is raised once the deadline has passed. ``call`` makes a fresh attempt
    each time (a stream of chunks, say, must be made anew), and ``what`` names it in the log."""
    attempt = 0
    while True:
        try:
            result = await call()
        except retry_on as exc:
            remaining = deadline - clock.now()
            if remaining <= 0:
                logger.error("%s failed after %d attempts, giving up at its deadline: %s", what, attempt + 1, exc)
                raise
            delay = min(max_delay_s, first_delay_s * 2**attempt) * (0.5 + rng() / 2)
            if attempt == 0:
                logger.warning("%s failed, retrying for up to %.1fs: %s", what, remaining, exc)
            attempt += 1
            await clock.sleep(min(delay, remaining))
            continue
        if attempt:
            logger.info("%s succeeded after %d retries", what, attempt)
        return result
