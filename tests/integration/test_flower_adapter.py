"""The Flower quickstart's NumPyClient, unchanged, over a real deployment, in the simulator, and under flwr."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedn.cli.sessions import wait_for_session
from fedn.codec import decode_model, encode_model
from fedn.launcher import FederationSpec, LocalFederation
from fedn.loading import FLOWER_ADAPTER
from fedn.records import RoundStatus, SessionStatus

QUICKSTART = "examples.flower.quickstart:client_fn"


def _accuracy(params: dict[str, np.ndarray]) -> float:
    from client.flower import FlowerClient

    client = FlowerClient(QUICKSTART, partition=0, num_partitions=1)
    return client.evaluate({k: v.copy() for k, v in params.items()}, {})[2]["accuracy"]


@pytest.mark.timeout(240)
def test_quickstart_runs_over_a_real_deployment(tmp_path: Path):
    from client.flower import FlowerClient

    seed_params = FlowerClient(QUICKSTART).initial_parameters()
    fed = LocalFederation(
        FederationSpec(
            client=FLOWER_ADAPTER,
            client_args=[f"flower={QUICKSTART}", "local-epochs=3"],
            num_combiners=1,
            num_clients=2,
            workdir=tmp_path / "fed",
            secure=False,
        )
    )
    try:
        fed.start()
        fed.start_clients()
        with fed.api() as api:
            seed = api.upload_model(encode_model(seed_params))
            session = api.start_session(rounds=2, min_clients=2, round_timeout_s=60.0, model_id=seed.id)
            session = wait_for_session(api, session.id, poll_s=0.2, timeout_s=180)
            assert session.status == SessionStatus.DONE, session.error
            rounds = api.list_rounds(session.id)
            assert [r.status for r in rounds] == [RoundStatus.DONE] * 2
            assert all(r.num_updates == 2 for r in rounds)
            final = decode_model(api.download_model(rounds[-1].model_out))
    finally:
        codes = fed.stop()
    assert set(final) == {"p0", "p1"}
    assert _accuracy(final) > _accuracy(seed_params) + 0.3
    assert set(codes.values()) <= {0}, codes


def test_quickstart_runs_in_the_simulator():
    from fedn.sim import Simulation, parse_spec

    spec = parse_spec(
        client=FLOWER_ADAPTER,
        client_args={"flower": QUICKSTART},
        eval_args={},
        clients=6,
        combiners=2,
        rounds=2,
        workers=1,
        seed=3,
    )
    result = Simulation(spec).run()
    assert [r["status"] for r in result.rounds] == ["done", "done"]
    assert result.rounds[-1]["updates"] == 6
    assert result.rounds[-1]["eval_accuracy"] > 0.8


def test_a_real_flwr_numpy_client_runs_through_the_adapter():
    flwr_client = pytest.importorskip("flwr.client", reason="flwr is not installed (pip install flwr)")
    from client.flower import FlowerClient
    from examples.flower import quickstart

    class RealClient(quickstart.DigitsNumPyClient, flwr_client.NumPyClient):
        pass

    def client_fn(context):
        data = quickstart.load_data(context.node_config["partition-id"], context.node_config["num-partitions"])
        return RealClient(data).to_client()  # what Flower's own client_fn returns

    quickstart.real_client_fn = client_fn  # named by reference, as --flower names it
    try:
        client = FlowerClient("examples.flower.quickstart:real_client_fn", partition=1, num_partitions=3)
        params = client.initial_parameters()
        new, num_examples, metrics = client.train(params, {"round": 1})
        loss, _, eval_metrics = client.evaluate(new, {})
    finally:
        del quickstart.real_client_fn
    assert isinstance(client.flower_client, flwr_client.NumPyClient)
    assert num_examples > 0 and metrics["train_loss"] > 0
    assert eval_metrics["accuracy"] > 0.5 and loss > 0
