"""A real federation as separate processes: reducer, 2 combiners, 4 clients on 127.0.0.1."""

from __future__ import annotations

import itertools
import signal
import time

import numpy as np
import pytest

from fedn.cli.sessions import wait_for_session
from fedn.codec import decode_model, encode_model
from fedn.launcher import LocalFederation
from fedn.records import RoundStatus, SessionStatus
from tests.e2e.conftest import accuracy_of

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


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

    session = wait_for_session(api, session.id, poll_s=0.2, timeout_s=360)
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
    assert accuracy_of(api.download_model(rounds[-1].model_out)) > accuracy_of(api.download_model(seed.id)) + 0.2
    api.close()

    # Every process exits, cleanly but for the one we killed.
    codes = federation.stop()
    assert all(not p.is_running() for p in federation.processes)
    assert codes.pop(victim.name) == -signal.SIGKILL
    assert set(codes.values()) == {0}, codes


def test_a_dead_combiner_goes_offline_and_its_clients_move(federation: LocalFederation):
    from examples.digits import DigitsClient

    api = federation.api()
    victim = federation.combiners[0]
    victim.signal(signal.SIGKILL)
    victim.popen.wait(30)
    # The reducer marks it offline after its heartbeat timeout; its clients reconnect to the live one.
    for _ in range(600):
        combiners = {c.id: c for c in api.list_combiners()}
        if combiners["combiner-0"].status == "offline" and combiners["combiner-1"].num_clients == 4:
            break
        time.sleep(0.1)
    assert combiners["combiner-0"].status == "offline"
    assert combiners["combiner-1"].num_clients == 4
    assert {c.combiner_id for c in api.list_clients()} == {"combiner-1"}

    seed = api.upload_model(encode_model(DigitsClient().initial_parameters()))
    session = api.start_session(rounds=2, min_clients=4, round_timeout_s=60.0, model_id=seed.id)
    session = wait_for_session(api, session.id, poll_s=0.1, timeout_s=240)
    assert session.status == SessionStatus.DONE, session.error
    rounds = api.list_rounds(session.id)
    assert all(r.combiners == ["combiner-1"] and r.num_updates == 4 for r in rounds)
    api.close()


def test_a_killed_reducer_resumes_its_session_and_loses_nothing(federation: LocalFederation):
    from examples.digits import DigitsClient

    api = federation.api()
    seed = api.upload_model(encode_model(DigitsClient().initial_parameters()))
    # Enough local epochs that a round takes a while, so the kill lands mid-session.
    session = api.start_session(
        rounds=4, min_clients=4, round_timeout_s=120.0, model_id=seed.id, config={"epochs": 150}
    )
    for _ in range(1200):
        if api.get_session(session.id).rounds_done >= 1:
            break
        time.sleep(0.1)
    assert api.get_session(session.id).rounds_done >= 1
    federation.reducer.signal(signal.SIGKILL)
    federation.reducer.popen.wait(30)
    api.close()

    federation.restart_reducer()
    api = federation.api()
    session = wait_for_session(api, session.id, poll_s=0.2, timeout_s=480)
    assert session.status == SessionStatus.DONE, session.error
    rounds = api.list_rounds(session.id)
    assert [r.index for r in rounds] == [1, 2, 3, 4]
    assert all(r.status == RoundStatus.DONE and r.num_updates == 4 for r in rounds)
    # The chain of global models is unbroken and every model is still stored.
    assert rounds[0].model_in == seed.id
    for before, after in itertools.pairwise(rounds):
        assert after.model_in == before.model_out
    for r in rounds:
        assert decode_model(api.download_model(r.model_out))
    assert session.model_id == rounds[-1].model_out
    api.close()


def test_a_combiner_killed_mid_round(federation: LocalFederation):
    from examples.digits import DigitsClient

    api = federation.api()
    seed = api.upload_model(encode_model(DigitsClient().initial_parameters()))
    session = api.start_session(
        rounds=3, min_clients=2, round_timeout_s=120.0, model_id=seed.id, config={"epochs": 150}
    )
    for _ in range(1200):
        rounds = api.list_rounds(session.id)
        if rounds and rounds[0].status == RoundStatus.RUNNING:
            break
        time.sleep(0.05)
    federation.combiners[0].signal(signal.SIGKILL)
    session = wait_for_session(api, session.id, poll_s=0.2, timeout_s=360)
    assert session.status == SessionStatus.DONE, session.error
    rounds = api.list_rounds(session.id)
    hit = [r for r in rounds if any(f.combiner_id == "combiner-0" and not f.client_id for f in r.failures)]
    assert hit, "no round recorded the dead combiner"
    assert hit[0].status == RoundStatus.DONE and hit[0].num_updates >= 2  # finished on combiner-1's partial
    for r in rounds:
        assert decode_model(api.download_model(r.model_out))  # every result was stored

    # The dead combiner is shown offline and its clients move to the live one for what comes next.
    for _ in range(600):
        combiners = {c.id: c for c in api.list_combiners()}
        if combiners["combiner-0"].status == "offline" and combiners["combiner-1"].num_clients == 4:
            break
        time.sleep(0.1)
    assert combiners["combiner-0"].status == "offline" and combiners["combiner-1"].num_clients == 4
    more = api.start_session(rounds=1, min_clients=4, round_timeout_s=120.0)
    more = wait_for_session(api, more.id, poll_s=0.2, timeout_s=240)
    assert more.status == SessionStatus.DONE, more.error
    assert api.list_rounds(more.id)[0].combiners == ["combiner-1"]
    api.close()
