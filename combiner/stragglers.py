"""Stragglers: clients that missed a sync round's deadline sit out the next rounds at this combiner.

A client that hangs would otherwise be selected again at once, and every round would wait its full
deadline for it. After a miss it is skipped for ``backoff_rounds`` rounds, twice as many after each
further miss, at most ``max_backoff_rounds``; an update it delivers forgives it. The back-off counts
rounds, not seconds, because what a straggler costs is a round that waits for it, however long
rounds are.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable, Sequence

from fedn.sampling import select_clients

__all__ = ["Stragglers"]

logger = logging.getLogger(__name__)

_LOGGED_IDS = 20


class Stragglers:
    """Consecutive misses per client and the round up to which each is skipped; shared by every sync
    round of the combiner (a round reports misses and deliveries, the router selects)."""

    def __init__(self, backoff_rounds: int = 1, max_backoff_rounds: int = 8, *, max_tracked: int = 10_000) -> None:
        self._backoff_rounds = backoff_rounds
        self._max_backoff_rounds = max_backoff_rounds
        self._max_tracked = max_tracked  # a client that never comes back is forgotten, oldest first
        self._round = 0  # sync rounds selected so far
        self._benched: OrderedDict[str, tuple[int, int]] = OrderedDict()  # client -> (misses, skipped to round)

    def __len__(self) -> int:
        return len(self._benched)

    def select(self, candidates: Sequence[str], k: int, seed: int, round_id: str) -> list[str]:
        """``select_clients`` over the candidates not on back-off; when those are fewer than the round
        needs (``k``, or one when ``k`` is 0 = every client), the ones whose back-off ends soonest are
        taken too: a straggler may still deliver, a client not asked never will."""
        self._round += 1
        benched = {c: e[1] for c in candidates if (e := self._benched.get(c)) is not None and e[1] >= self._round}
        if not benched:
            return select_clients(candidates, k, seed)
        eligible = [c for c in candidates if c not in benched]
        short = max(k, 1) - len(eligible)
        if short > 0:
            eligible += sorted(benched, key=lambda c: (benched[c], c))[:short]
        skipped = sorted(set(benched) - set(eligible))
        if skipped:
            shown = ", ".join(skipped[:_LOGGED_IDS]) + (", ..." if len(skipped) > _LOGGED_IDS else "")
            logger.info(
                "round %s: %d clients skipped, on back-off after missing a deadline: %s", round_id, len(skipped), shown
            )
        return select_clients(eligible, k, seed)

    def missed(self, client_ids: Iterable[str]) -> None:
        """These clients were asked in the latest round and sent nothing by its deadline."""
        for client_id in client_ids:
            misses = self._benched.pop(client_id, (0, 0))[0] + 1
            rounds = min(self._max_backoff_rounds, self._backoff_rounds * 2 ** min(misses - 1, 30))
            self._benched[client_id] = (misses, self._round + rounds)
            while len(self._benched) > self._max_tracked:
                self._benched.popitem(last=False)

    def delivered(self, client_id: str) -> None:
        self._benched.pop(client_id, None)
