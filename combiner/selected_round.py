"""What a sync round and an evaluation round share: a fixed set of selected clients, each answering once,
a deadline, and a task that drives the round and returns its result (see :class:`combiner.run.Run`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from combiner.run import RunContext, Tally
from fedn.errors import Conflict, FailedPrecondition
from fedn.records import RoundPlan, RoundResult

__all__ = ["SelectedRound"]

logger = logging.getLogger(__name__)


class SelectedRound:
    """The lifecycle and client bookkeeping of a round whose clients were chosen when it started.

    Subclasses give ``_drive`` (the round, ending in its result), the verb a task asks of a client
    (``_asks``), and may extend ``_answer`` and ``_busy``.
    """

    _asks = "train"

    def __init__(self, ctx: RunContext, plan: RoundPlan, selected: list[str], started_at: float | None) -> None:
        self._ctx = ctx
        self.plan = plan
        self._selected = set(selected)
        # when the reducer asked: the deadline counts from then, whatever reading the model took
        self._started_at = ctx.clock.now() if started_at is None else started_at
        self._tally = Tally()
        self._answered: set[str] = set()
        self._closed = False
        self._discard = False  # abandoned (its session was stopped): nothing of it is kept
        self._all_answered = asyncio.Event()
        self._task: asyncio.Task | None = None

    _drive: Callable[[], Awaitable[RoundResult]]

    @property
    def run_id(self) -> str:
        return self.plan.round_id

    @property
    def session_id(self) -> str:
        return self.plan.session_id

    @property
    def closed(self) -> bool:
        return self._closed

    def start(self) -> None:
        self._task = asyncio.create_task(self._drive(), name=f"{self._asks}-{self.plan.round_id}")

    async def result(self, plan: RoundPlan) -> RoundResult:
        assert self._task is not None, "start() the round first"
        return await asyncio.shield(self._task)

    async def wait_closed(self) -> None:
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._task)

    def close(self, reason: str) -> None:
        """Stop waiting for the clients: the round ends with what arrived so far."""
        if self._task is not None and not self._task.done():
            logger.warning("round %s abandoned: %s", self.plan.round_id, reason)
        self._all_answered.set()

    def abandon(self, reason: str) -> None:
        """The session was stopped: end now, and keep nothing of what arrived."""
        self._discard = True
        self.close(reason)

    # -- clients -----------------------------------------------------------------

    def _busy(self, client_id: str) -> bool:
        """Has ``client_id`` an answer on the way (it may not answer again)?"""
        return False

    def _expect(self, client_id: str) -> None:
        round_id = self.plan.round_id
        if self._closed:
            raise FailedPrecondition(f"round {round_id!r} is closed on combiner {self._ctx.combiner_id}")
        if client_id not in self._selected:
            raise FailedPrecondition(f"client {client_id!r} was not asked to {self._asks} in round {round_id!r}")
        if client_id in self._answered or self._busy(client_id):
            raise Conflict(f"client {client_id!r} already sent its answer for round {round_id!r}")

    def _answer(self, client_id: str, error: str | None = None) -> None:
        self._answered.add(client_id)
        if error is not None:
            self._tally.fail(client_id, error)
        if self._answered >= self._selected:
            self._all_answered.set()

    def client_connected(self, client_id: str, replaced: bool) -> None:
        """Nothing to do: the round's clients were chosen when it started."""

    def client_left(self, client_id: str) -> None:
        if not self._closed and client_id in self._selected and client_id not in self._answered:
            self._answer(client_id, "client disconnected")
