"""Session options that only fail in combination are refused before the session starts."""

from __future__ import annotations

import pytest

from fedn.errors import InvalidArgument
from fedn.session_options import check_session_options


def _check(aggregator: str, params: dict, min_clients: int, **extra) -> None:
    check_session_options(
        aggregator=aggregator,
        aggregator_params=params,
        strategy="fedavg",
        strategy_params={},
        min_clients=min_clients,
        **extra,
    )


def test_krum_needs_two_f_plus_three_clients():
    with pytest.raises(InvalidArgument, match="krum with f=1 needs min_clients >= 5"):
        _check("krum", {"f": 1}, 4)
    _check("krum", {"f": 1}, 5)


def test_multi_krum_needs_m_plus_f_clients():
    with pytest.raises(InvalidArgument, match="multi-krum with m=6 and f=1 needs min_clients >= 7"):
        _check("krum", {"f": 1, "m": 6}, 6)
    _check("krum", {"f": 1, "m": 6}, 7)


def test_async_options_are_refused_in_sync_mode_and_robust_rules_in_async():
    with pytest.raises(InvalidArgument, match="only apply to mode async"):
        _check("fedavg", {}, 1, given={"buffer_size"})
    with pytest.raises(InvalidArgument, match="needs mode sync"):
        _check("median", {}, 1, mode="async")
