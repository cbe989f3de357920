"""A real federation as separate processes: reducer, 2 combiners, 4 clients on 127.0.0.1."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import numpy as np
import pytest

from fedn.codec import decode_model, encode_model
from fedn.launcher import FederationSpec, LocalFederation
from fedn.records import RoundStatus, SessionStatus

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

CLIENT = "examples.digits:DigitsClient"


def _accuracy(blob: bytes) -> float:
    from examples.digits import DigitsClient

    params = {k: v.copy() for k, v in decode_model(blob).items()}
    return DigitsClient(split="test").evaluate(params, {})[2]["accuracy"]


@pytest.fixture
def federation(tmp_path: Path):
    fed = LocalFederation(FederationSpec(client=CLIENT, num_combiners=2, num_clients=4, workdir=tmp_path / "fed"))
    fed.start()
    try:
        fed.start_clients()
        yield fed
    finally:
        fed.stop()


def test_three_rounds_survive_a_killed_client(federation: LocalFederation):
    from examples.digits import DigitsClient

    api = federation.api()
    seed = api.upload_model(encode_model(DigitsClient().initial_parameters()))
    assert {c.num_clients for c in api.list_combiners()} == {2}, "the reducer should balance 4 clients over 2"

    session = api.start_session(rounds=3, min_clients=2, round_timeout_s=120.0, model_id=seed.id)
    # Kill one client as soon as the first round is under way; the session must still finish.
    victim = federation.clients[3]
    first_round_running = False
    for _ in range(600):
        rounds = api.list_rounds(session.id)
        if rounds and rounds[0].status in (RoundStatus.RUNNING, RoundStatus.DONE):
            first_round_running = True
            break
        time.sleep(0.1)
    assert first_round_running
    victim.signal(signal.SIGKILL)
    victim.popen.wait(30)

    for _ in range(1800):
        session = api.get_session(session.id)
        if session.status in (SessionStatus.DONE, SessionStatus.FAILED):
            break
        time.sleep(0.2)
    assert session.status == SessionStatus.DONE, session.error
    rounds = api.list_rounds(session.id)
    assert [r.status for r in rounds] == [RoundStatus.DONE] * 3

    # Every round produced a new global model that differs from the one it started from.
    for r in rounds:
        assert r.model_out and r.model_out != r.model_in
        before, after = decode_model(api.download_model(r.model_in)), decode_model(api.download_model(r.model_out))
        assert any(not np.array_equal(before[k], after[k]) for k in before)
    # Both combiners served clients.
    assert len(rounds[0].combiners) == 2
    # The killed client did not hang a round: later rounds ran on the 3 others, not to the deadline.
    assert rounds[-1].num_updates == 3
    assert not any("deadline" in f.error for r in rounds for f in r.failures)
    # Accuracy rose.
    assert _accuracy(api.download_model(rounds[-1].model_out)) > _accuracy(api.download_model(seed.id)) + 0.2
    api.close()

    # Every process exits, cleanly but for the one we killed.
    codes = federation.stop()
    assert all(not p.is_running() for p in federation.processes)
    assert codes.pop(victim.name) == -signal.SIGKILL
    assert set(codes.values()) == {0}, codes
