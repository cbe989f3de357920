"""Checks of a session's strategy options that span several fields, shared by the REST API and ``fedn local``.

Each option is validated on its own by its pydantic model; this catches the combinations that
cannot work, so the caller gets a clear error before the session starts rather than mid-round.
"""

from __future__ import annotations

from collections.abc import Mapping, Set

from fedn.aggregation import aggregator_config
from fedn.aggregation.server_optimizers import make_server_optimizer
from fedn.errors import InvalidArgument
from fedn.records import SessionMode

__all__ = ["ASYNC_OPTIONS", "TRAINING_OPTIONS", "check_session_options"]

# options that only mean something in async mode
ASYNC_OPTIONS = frozenset({"buffer_size", "staleness_exponent", "max_staleness"})
# options that mean nothing in an evaluation-only session
TRAINING_OPTIONS = frozenset({"aggregator", "aggregator_config", "strategy", "strategy_config", "evaluate_every"})


def check_session_options(
    *,
    aggregator: str,
    aggregator_params: Mapping[str, object],
    strategy: str,
    strategy_params: Mapping[str, object],
    min_clients: int,
    mode: SessionMode | str = SessionMode.SYNC,
    given: Set[str] = frozenset(),
) -> None:
    """Raise InvalidArgument for a bad rule, strategy, or combination of them; ``given`` names the
    options the caller set explicitly (async-only options are refused in sync mode)."""
    rule = aggregator_config(aggregator, aggregator_params)
    if aggregator == "krum" and min_clients < max(2 * rule.f + 3, rule.m + rule.f):
        # Krum scores need n >= 2f + 3; Multi-Krum averages m of the n - f candidates
        if min_clients < 2 * rule.f + 3:
            raise InvalidArgument(f"krum with f={rule.f} needs min_clients >= {2 * rule.f + 3}")
        raise InvalidArgument(f"multi-krum with m={rule.m} and f={rule.f} needs min_clients >= {rule.m + rule.f}")
    make_server_optimizer(strategy, strategy_params)
    mode = SessionMode(mode)
    if mode == SessionMode.ASYNC and aggregator != "fedavg":
        raise InvalidArgument(
            f"mode async folds staleness-weighted deltas with fedavg; aggregator {aggregator!r} needs mode sync"
        )
    misplaced = sorted(ASYNC_OPTIONS & set(given))
    if mode != SessionMode.ASYNC and misplaced:
        raise InvalidArgument(f"{', '.join(misplaced)} only apply to mode async")
    training = sorted(TRAINING_OPTIONS & set(given))
    if mode == SessionMode.EVALUATE and training:
        raise InvalidArgument(f"{', '.join(training)} do not apply to mode evaluate: nothing is trained")
