"""Federated evaluation on the clients, evaluation-only sessions, and stopping a session, on a real
federation (reducer, 2 combiners, 4 digits clients as processes, TLS and tokens on)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from fedn.api_client import ReducerAPI
from fedn.auth.tokens import Role
from fedn.cli.sessions import wait_for_session
from fedn.codec import decode_model, encode_model
from fedn.launcher import FederationSpec, LocalFederation
from fedn.records import RoundStatus, SessionMode, SessionStatus
from tests.e2e.conftest import CLIENT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

NUM_CLIENTS = 4


@pytest.fixture
def fed(tmp_path: Path):
    federation = LocalFederation(
        FederationSpec(client=CLIENT, num_combiners=2, num_clients=NUM_CLIENTS, workdir=tmp_path / "fed")
    )
    federation.start()
    try:
        federation.start_clients()
        federation.wait_for_clients(NUM_CLIENTS, timeout_s=120)
        yield federation
    finally:
        federation.stop()


def _own_evaluation(model_blob: bytes, partition: int) -> tuple[float, float, float]:
    """What client ``partition`` computes on its own held-out data: (loss, examples, accuracy)."""
    from examples.digits import DigitsClient

    params = {k: v.copy() for k, v in decode_model(model_blob).items()}
    loss, n, metrics = DigitsClient(partition=partition, num_partitions=NUM_CLIENTS).evaluate(params, {})
    return loss, n, metrics["accuracy"]


def _weighted(values: list[tuple[float, float]]) -> float:
    return sum(v * w for v, w in values) / sum(w for _, w in values)


def test_rounds_carry_the_federated_evaluation_of_their_model(fed: LocalFederation):
    from examples.digits import DigitsClient

    with fed.api() as api:
        seed = api.upload_model(encode_model(DigitsClient().initial_parameters()))
        session = api.start_session(
            rounds=2, min_clients=NUM_CLIENTS, round_timeout_s=120.0, model_id=seed.id, evaluate_every=1
        )
        session = wait_for_session(api, session.id, poll_s=0.2, timeout_s=300)
        assert session.status == SessionStatus.DONE, session.error
        rounds = list(api.list_rounds(session.id))
        assert [r.status for r in rounds] == [RoundStatus.DONE, RoundStatus.DONE]
        for r in rounds:
            ev = r.evaluation
            assert ev is not None and ev.model_id == r.model_out
            assert ev.num_clients == NUM_CLIENTS and not ev.failures
            # the federated figures are the example-weighted mean of what each client computes itself
            blob = api.download_model(r.model_out)
            own = [_own_evaluation(blob, p) for p in range(NUM_CLIENTS)]
            assert ev.num_examples == pytest.approx(sum(n for _, n, _ in own))
            assert ev.metrics["loss"].mean == pytest.approx(_weighted([(loss, n) for loss, n, _ in own]), rel=1e-5)
            assert ev.metrics["accuracy"].mean == pytest.approx(_weighted([(a, n) for _, n, a in own]), rel=1e-5)
            assert ev.metrics["accuracy"].count == NUM_CLIENTS
            # an admin sees each client's own figures
            assert sorted(e.client_id for e in ev.per_client) == sorted(c.id for c in api.list_clients())
        # a viewer sees the aggregates, not each client's figures (only aggregates are exposed, DESIGN 9)
        viewer = ReducerAPI(fed.reducer_url, token=fed.secrets.token(Role.VIEWER, "watcher"), tls=fed.api_tls())
        with viewer:
            seen = viewer.get_round(rounds[-1].id).evaluation
            listed = list(viewer.list_rounds(session.id))[-1].evaluation
        assert seen.metrics == rounds[-1].evaluation.metrics and seen.per_client == [] and listed.per_client == []
        # the shares split the held-out set: the federated accuracy is the central one
        central = DigitsClient(split="test").evaluate(
            {k: v.copy() for k, v in decode_model(api.download_model(rounds[-1].model_out)).items()}, {}
        )[2]["accuracy"]
        assert rounds[-1].evaluation.metrics["accuracy"].mean == pytest.approx(central, abs=1e-6)


def test_an_evaluation_session_evaluates_a_stored_model(fed: LocalFederation):
    from examples.digits import DigitsClient

    with fed.api() as api:
        model = api.upload_model(encode_model(DigitsClient().initial_parameters()))
        session = api.start_session(rounds=1, mode="evaluate", model_id=model.id, min_clients=NUM_CLIENTS)
        assert session.mode == SessionMode.EVALUATE
        session = wait_for_session(api, session.id, poll_s=0.2, timeout_s=120)
        assert session.status == SessionStatus.DONE, session.error
        assert session.model_id == model.id  # nothing trained
        (round_,) = api.list_rounds(session.id)
        assert round_.status == RoundStatus.DONE and round_.model_out is None
        ev = round_.evaluation
        assert ev.model_id == model.id and ev.num_clients == NUM_CLIENTS
        accuracy = ev.metrics["accuracy"].mean
        assert 0.0 <= accuracy <= 0.3  # an untrained model of 10 classes
        assert math.isfinite(ev.metrics["loss"].mean)


def test_stop_ends_a_running_session_and_a_restarted_reducer_does_not_resume_it(fed: LocalFederation):
    from examples.digits import DigitsClient

    with fed.api() as api:
        seed = api.upload_model(encode_model(DigitsClient().initial_parameters()))
        # a long round: clients train 200 epochs, so the stop lands while the round runs
        session = api.start_session(
            rounds=50, min_clients=NUM_CLIENTS, round_timeout_s=300.0, model_id=seed.id, config={"epochs": 200}
        )
        for _ in range(600):
            rounds = list(api.list_rounds(session.id))
            if rounds and rounds[0].status == RoundStatus.RUNNING:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the first round never ran")
        stopping = api.stop_session(session.id)
        assert stopping.stop_requested_by
        queued = api.start_session(rounds=1, min_clients=NUM_CLIENTS, round_timeout_s=120.0, model_id=seed.id)
        asked = time.monotonic()
        session = wait_for_session(api, session.id, poll_s=0.1, timeout_s=60)
        took = time.monotonic() - asked
        assert session.status == SessionStatus.STOPPED and session.stopped_by == stopping.stop_requested_by
        assert took < 30, f"the stop took {took:.1f}s: the round was not abandoned at the combiners"
        rounds = list(api.list_rounds(session.id))
        assert rounds[-1].status == RoundStatus.STOPPED and "stopped by" in (rounds[-1].reason or "")
        assert session.rounds_done < 50

    fed.restart_reducer()
    with fed.api() as api:
        # the queued session runs; the stopped one stays stopped
        queued = wait_for_session(api, queued.id, poll_s=0.2, timeout_s=300)
        assert queued.status == SessionStatus.DONE, queued.error
        again = api.get_session(session.id)
        assert again.status == SessionStatus.STOPPED and again.rounds_done == session.rounds_done


def test_a_pending_session_is_cancelled(fed: LocalFederation):
    from examples.digits import DigitsClient

    with fed.api() as api:
        seed = api.upload_model(encode_model(DigitsClient().initial_parameters()))
        first = api.start_session(
            rounds=20, min_clients=NUM_CLIENTS, round_timeout_s=300.0, model_id=seed.id, config={"epochs": 50}
        )
        second = api.start_session(rounds=1, min_clients=NUM_CLIENTS, model_id=seed.id)
        cancelled = api.stop_session(second.id)
        assert cancelled.status == SessionStatus.STOPPED
        assert list(api.list_rounds(second.id)) == []
        api.stop_session(first.id)
        assert wait_for_session(api, first.id, poll_s=0.1, timeout_s=60).status == SessionStatus.STOPPED
        assert api.get_session(second.id).status == SessionStatus.STOPPED


def test_stop_ends_an_async_session_and_its_clients_train_for_the_next_one(fed: LocalFederation):
    from examples.digits import DigitsClient

    with fed.api() as api:
        seed = api.upload_model(encode_model(DigitsClient().initial_parameters()))
        session = api.start_session(
            rounds=10_000, mode="async", buffer_size=2, min_clients=2, round_timeout_s=120.0, model_id=seed.id
        )
        for _ in range(600):  # a few versions made: the clients train continuously
            if api.get_session(session.id).rounds_done >= 3:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the async session made no versions")
        stopping = api.stop_session(session.id)
        session = wait_for_session(api, session.id, poll_s=0.1, timeout_s=60)
        assert session.status == SessionStatus.STOPPED and session.stopped_by == stopping.stop_requested_by
        versions = session.rounds_done
        time.sleep(1.0)  # no combiner goes on merging for it
        assert api.get_session(session.id).rounds_done == versions
        # the clients are free: a sync session runs on all of them
        after = api.start_session(rounds=1, min_clients=NUM_CLIENTS, round_timeout_s=120.0, model_id=seed.id)
        after = wait_for_session(api, after.id, poll_s=0.2, timeout_s=180)
        assert after.status == SessionStatus.DONE, after.error
        assert api.list_rounds(after.id)[0].num_updates == NUM_CLIENTS
