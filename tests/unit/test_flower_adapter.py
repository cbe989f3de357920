"""The Flower adapter: list <-> named arrays, client_fn signatures, config and metrics, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from client.flower import FlowerClient, from_ndarrays, to_ndarrays
from fedn.errors import InvalidArgument, InvalidModel
from fedn.loading import FLOWER_ADAPTER, flower_client

HERE = "tests.unit.test_flower_adapter"


class EchoClient:
    """The NumPyClient shape; records what it was given."""

    def __init__(self, tag: str = "") -> None:
        self.tag, self.seen = tag, []

    def get_parameters(self, config):
        return [np.zeros((2, 3), np.float32), np.ones(3, np.float32)]

    def fit(self, parameters, config):
        self.seen.append(config)
        parameters[0] += 1.0  # Flower clients write into what they get
        return parameters, 7, {"train_loss": 0.5, "note": "text is dropped", "n": 3}

    def evaluate(self, parameters, config):
        return 0.25, 4, {"accuracy": 1.0}


def client_fn(context):
    return EchoClient(f"{context.node_config['partition-id']}/{context.node_config['num-partitions']}")


def client_fn_cid(cid: str):
    return EchoClient(cid)


def client_fn_none():
    return EchoClient("none")


def wrapped_fn(context):
    class Wrapper:  # the shape of flwr's NumPyClient.to_client()
        numpy_client = EchoClient("wrapped")

    return Wrapper()


def not_a_client(context):
    return object()


def failing_fn(context):
    raise FileNotFoundError("no data here")


class BrokenFit(EchoClient):
    def fit(self, parameters, config):
        raise ValueError("loss is nan")


class BadShapes(EchoClient):
    def fit(self, parameters, config):
        return parameters, 7


def broken_fit(context):
    return BrokenFit()


def bad_shapes(context):
    return BadShapes()


class ClientApp:  # named as flwr's
    pass


app = ClientApp()


def test_arrays_round_trip_in_order_past_ten():
    arrays = [np.full(2, i, np.float32) for i in range(12)]
    named = from_ndarrays(arrays)
    assert list(named) == [f"p{i}" for i in range(12)]
    shuffled = {k: named[k] for k in sorted(named)}  # "p10" before "p2"
    assert [a[0] for a in to_ndarrays(shuffled)] == list(range(12))


def test_foreign_names_and_non_lists_are_refused():
    with pytest.raises(InvalidModel, match=r"p0\.\.p1"):
        to_ndarrays({"w": np.zeros(1), "b": np.zeros(1)})
    with pytest.raises(InvalidModel, match="list of numpy arrays"):
        from_ndarrays(np.zeros(3))
    with pytest.raises(InvalidModel, match=r"\[1\] is a str"):
        from_ndarrays([np.zeros(1), "x"])


@pytest.mark.parametrize(
    ("fn", "tag"), [("client_fn", "2/5"), ("client_fn_cid", "2"), ("client_fn_none", "none"), ("wrapped_fn", "wrapped")]
)
def test_flower_signatures(fn: str, tag: str):
    c = FlowerClient(f"{HERE}:{fn}", partition=2, num_partitions=5)
    assert c.flower_client.tag == tag


def test_train_and_evaluate_convert_both_ways():
    c = FlowerClient(f"{HERE}:client_fn", partition=0, num_partitions=1, lr=0.1)
    params = c.initial_parameters()
    params["p0"].setflags(write=False)  # as decoded from the wire
    new, n, metrics = c.train(params, {"round": 3, "epochs": 2})
    assert n == 7 and metrics == {"train_loss": 0.5, "n": 3.0}
    np.testing.assert_array_equal(new["p0"], np.ones((2, 3)))
    assert c.flower_client.seen == [{"round": 3, "epochs": 2, "server_round": 3}]
    assert c.evaluate(new, {}) == (0.25, 4, {"accuracy": 1.0})
    assert c._context.run_config == {"lr": 0.1}


@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        (f"{HERE}:app", InvalidArgument, "ClientApp; name its client function"),
        (f"{HERE}:nope", InvalidArgument, "has no attribute 'nope'"),
        (f"{HERE}:not_a_client", InvalidArgument, "not a Flower NumPyClient"),
        (f"{HERE}:failing_fn", InvalidArgument, "failing_fn failed: FileNotFoundError: no data here"),
    ],
)
def test_bad_client_functions_fail_in_one_line(spec: str, error: type, match: str):
    with pytest.raises(error, match=match):
        FlowerClient(spec).initial_parameters()


def test_failing_and_misshapen_fit_name_the_client():
    params = from_ndarrays([np.zeros(1)])
    with pytest.raises(RuntimeError, match="broken_fit fit\\(\\) failed: ValueError: loss is nan"):
        FlowerClient(f"{HERE}:broken_fit").train(params, {})
    with pytest.raises(InvalidArgument, match="must return \\(parameters, num_examples, metrics\\)"):
        FlowerClient(f"{HERE}:bad_shapes").train(params, {})


def test_cli_spec_names_the_adapter():
    assert flower_client(f"{HERE}:client_fn", ["x=1"]) == (FLOWER_ADAPTER, [f"flower={HERE}:client_fn", "x=1"])
    with pytest.raises(InvalidArgument, match="not of the form"):
        flower_client("no_colon", [])
