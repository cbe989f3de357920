"""A combiner that comes back gets clients by rebalancing: real processes, kill -9, restart."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from fedn.cli.sessions import wait_for_session
from fedn.codec import encode_model
from fedn.launcher import FederationSpec, LocalFederation
from fedn.records import RoundStatus, SessionStatus
from tests.e2e.conftest import CLIENT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

HEARTBEAT_S = 1.0


def _split(api) -> dict[str, int]:
    return {c.id: c.num_clients for c in api.list_combiners() if c.status == "online"}


def _wait_for(predicate, timeout_s: float, poll_s: float = 0.1) -> float:
    """Seconds until ``predicate()`` held; fails after ``timeout_s``."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"not within {timeout_s:g}s")
        time.sleep(poll_s)
    return time.monotonic() - started


def test_a_restarted_combiner_gets_half_the_clients_back_and_a_session_completes(tmp_path: Path):
    from examples.digits import DigitsClient

    spec = FederationSpec(
        client=CLIENT, num_combiners=2, num_clients=4, workdir=tmp_path / "fed", combiner_heartbeat_s=HEARTBEAT_S
    )
    fed = LocalFederation(spec)
    fed.start()
    try:
        fed.start_clients()
        api = fed.api()
        assert sorted(_split(api).values()) == [2, 2]

        fed.combiners[0].signal(signal.SIGKILL)
        fed.combiners[0].popen.wait(30)
        _wait_for(lambda: _split(api) == {"combiner-1": 4}, timeout_s=60)

        fed.start_combiner(0)  # the same name, back on a new port
        _wait_for(lambda: "combiner-0" in _split(api), timeout_s=30, poll_s=0.05)
        # within a few heartbeat intervals: combiner-1 is told to shed two idle clients, which ask the
        # reducer again and are sent to the empty combiner
        took = _wait_for(lambda: _split(api) == {"combiner-0": 2, "combiner-1": 2}, timeout_s=8 * HEARTBEAT_S)
        assert took <= 8 * HEARTBEAT_S
        time.sleep(3 * HEARTBEAT_S)
        assert _split(api) == {"combiner-0": 2, "combiner-1": 2}, "balanced, and it stays so"
        assert sorted(c.combiner_id for c in api.list_clients() if c.status == "online") == [
            "combiner-0",
            "combiner-0",
            "combiner-1",
            "combiner-1",
        ]

        seed = api.upload_model(encode_model(DigitsClient().initial_parameters()))
        session = api.start_session(rounds=2, min_clients=4, round_timeout_s=60.0, model_id=seed.id)
        session = wait_for_session(api, session.id, poll_s=0.1, timeout_s=240)
        assert session.status == SessionStatus.DONE, session.error
        rounds = api.list_rounds(session.id)
        assert [r.status for r in rounds] == [RoundStatus.DONE] * 2
        assert all(sorted(r.combiners) == ["combiner-0", "combiner-1"] and r.num_updates == 4 for r in rounds)
        assert all(not r.failures for r in rounds), [r.failures for r in rounds]
        assert _split(api) == {"combiner-0": 2, "combiner-1": 2}, "no client was moved by the session"
        api.close()
    finally:
        fed.stop()
        assert all(not p.is_running() for p in fed.processes)
