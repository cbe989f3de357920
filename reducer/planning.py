"""What a round (sync) or a flush (async) asks of the combiners: who takes part, with what share, and the plan.

Sync and async sessions are both given one :class:`Planner`. It reads the registry (whose clock
judges liveness and the wait for clients) and the global model's record (its sha256, which every plan
and announcement carries so a combiner refuses a blob that was replaced), and writes nothing.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from fedn.aggregation.server_optimizers import ServerOptimizer
from fedn.compression import parse_compression
from fedn.records import CombinerRecord, RoundPlan, Session, SessionMode
from fedn.sampling import allocate_sample, sample_seed, sample_size
from fedn.store.base import StateStore
from reducer.registry import CombinerRegistry

__all__ = ["Planner", "Share"]


@dataclass(frozen=True)
class Share:
    """One combiner's part: ``max_clients`` of its clients train (0 = every client it has).
    ``client_ids`` are its clients as of its last heartbeat, to name them if its call fails."""

    combiner: CombinerRecord
    max_clients: int = 0
    client_ids: tuple[str, ...] = ()


class Planner:
    """Waits for clients, splits a session's sample over the live combiners and builds their plans."""

    def __init__(
        self,
        registry: CombinerRegistry,
        stop: threading.Event,
        *,
        rpc_grace_s: float,
        resume_wait_s: float = 30.0,
        state: StateStore | None = None,
    ) -> None:
        """Without ``state``, plans leave ``model_sha256`` unsaid."""
        self._state = state
        self._registry = registry
        self._stop = stop
        self.rpc_grace_s = rpc_grace_s
        self._resume_wait_s = resume_wait_s

    @contextlib.contextmanager
    def round_in_progress(self) -> Iterator[None]:
        """Around a sync round, from its planning to its merge: no shed is ordered meanwhile, and a shed
        ordered since the last round first shows in the heartbeats (bounded; see the registry)."""
        with self._registry.round_in_progress():
            self._registry.wait_for_sheds(self._stop)
            yield

    def wait_for_clients(self, session: Session) -> str:
        """Block until ``min_clients`` are connected, ``round_timeout_s`` passed on the clock, or the
        controller stops; returns why the session cannot go on ("" if it can, or if it was stopped)."""
        seen = self._registry.wait_for_clients(session.min_clients, session.round_timeout_s, self._stop)
        if seen >= session.min_clients or self._stop.is_set():
            return ""
        return f"only {seen} clients connected, min_clients is {session.min_clients}"

    def shares(self, session: Session) -> list[Share]:
        """The live combiners with clients, each with its share of ``fraction``; combiners whose share
        is 0 are left out."""
        split = self._split(session, [c for c in self._registry.live() if c.num_clients > 0])
        return split if session.fraction >= 1.0 else [s for s in split if s.max_clients > 0]

    def resume_wait_s(self, session: Session) -> float:
        """How long a restarted reducer waits for the combiners of the round it resumes (on the clock)."""
        return min(session.round_timeout_s, self._resume_wait_s)

    def wait_for_combiners(self, session: Session, combiner_ids: list[str]) -> tuple[list[Share], list[str]]:
        """Wait until every one of ``combiner_ids`` is live, :meth:`resume_wait_s` passed, or the
        controller stops; returns the shares of those that are live (each asked again, whatever its
        client count: it may hold a finished result) and the ids of those that are not."""
        live = self._registry.wait_for_combiners(combiner_ids, self.resume_wait_s(session), self._stop)
        back = [c for c in live if c.id in combiner_ids]
        shares = self._split(session, back)
        if session.fraction < 1.0:  # it had a share when the round began; one that starts afresh trains one
            shares = [Share(s.combiner, max(1, s.max_clients), s.client_ids) for s in shares]
        return shares, [i for i in combiner_ids if i not in {c.id for c in back}]

    def _split(self, session: Session, combiners: list[CombinerRecord]) -> list[Share]:
        """Each of ``combiners`` with its share of the session's sample (every client if fraction is 1)."""
        ids = {c.id: tuple(self._registry.client_ids(c.id)) for c in combiners}
        if session.fraction >= 1.0:
            return [Share(c, 0, ids[c.id]) for c in combiners]
        counts = {c.id: c.num_clients for c in combiners}
        shares = allocate_sample(counts, sample_size(sum(counts.values()), session.fraction, session.min_clients))
        return [Share(c, shares[c.id], ids[c.id]) for c in combiners]

    def call_timeout_s(self, session: Session) -> float:
        """How long one ``RunRound`` call may take: the combiner's deadline plus the RPC grace."""
        return session.round_timeout_s + self.rpc_grace_s

    def plan(self, session: Session, optimizer: ServerOptimizer, *, round_id: str, index: int) -> RoundPlan:
        """The plan for round ``index`` (sync) or for the flush that makes version ``index`` (async),
        for every combiner alike: :meth:`for_share` sets each one's client count.

        The clients' config is the session's with the server optimizer's entries (e.g. ``lr``) on top.
        """
        plan = RoundPlan(
            round_id=round_id,
            session_id=session.id,
            round_index=index,
            model_id=session.model_id,
            aggregator=session.aggregator,
            aggregator_config=session.aggregator_config,
            config={**session.config, **optimizer.client_config()},
            timeout_s=session.round_timeout_s,
            sample_seed=sample_seed(session.seed, index),
            model_sha256=self.model_sha256(session),
            compression=parse_compression(session.compression).for_round(index).text(),  # a top-k warm-up's share
            downlink_compression=session.downlink_compression,
        )
        if session.mode != SessionMode.ASYNC:
            return plan
        return plan.model_copy(
            update={
                "mode": SessionMode.ASYNC,
                "buffer_size": session.buffer_size,
                "model_version": index - 1,  # the version of model_id that the flush starts from
                "staleness_exponent": session.staleness_exponent,
                "max_staleness": session.max_staleness,
            }
        )

    def model_sha256(self, session: Session) -> str:
        """The sha256 of the session's global model, as its record has it ("" without a state store)."""
        return self._state.get_model(session.model_id).sha256 if self._state is not None else ""

    def listeners(self, *, final: bool) -> list[CombinerRecord]:
        """Who hears that an async session's model moved on: the combiners with clients, or every live
        one when the session ends (so each stops its clients)."""
        return [c for c in self._registry.live() if final or c.num_clients > 0]

    @staticmethod
    def for_share(plan: RoundPlan, share: Share) -> RoundPlan:
        return plan.model_copy(update={"max_clients": share.max_clients})
