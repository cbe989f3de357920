"""Checks of a session's strategy options that span several fields, shared by the REST API and ``fedn local``.

Each option is validated on its own by its pydantic model; this catches the combinations that
cannot work, so the caller gets a clear error before the session starts rather than mid-round.
"""

from __future__ import annotations

from collections.abc import Mapping, Set

from fedn.aggregation import aggregator_config
from fedn.aggregation.server_optimizers import make_server_optimizer
from fedn.compression import parse_compression
from fedn.errors import InvalidArgument
from fedn.records import SessionMode

__all__ = ["ASYNC_OPTIONS", "TRAINING_OPTIONS", "check_session_options", "session_compression"]

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


def session_compression(
    compression: str | None, downlink_compression: str | None, mode: SessionMode | str = SessionMode.SYNC
) -> tuple[str, str]:
    """The canonical texts of a session's update and model codecs (fedn.compression), or InvalidArgument.

    Downlink sends a whole model, which top-k cannot stand for. Compression is for training sessions in
    sync mode: an evaluation session trains nothing, and an async session's updates are deltas from
    whichever version each client trained on, a base the combiner does not keep."""
    uplink = parse_compression(compression)
    downlink = parse_compression(downlink_compression)
    if downlink.codec == "topk":
        raise InvalidArgument("downlink_compression topk cannot compress a whole model; use it for updates")
    mode = SessionMode(mode)
    if (uplink.lossless and downlink.lossless) or mode == SessionMode.SYNC:
        return uplink.text(), downlink.text()
    if mode == SessionMode.EVALUATE:
        raise InvalidArgument("compression and downlink_compression do not apply to mode evaluate: nothing is trained")
    raise InvalidArgument(
        "compression and downlink_compression need mode sync: an async update is a delta from the version its "
        "client trained on, which the combiner does not keep"
    )
