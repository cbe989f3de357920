"""A real federation of processes for end-to-end tests; every process is stopped afterwards."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedn.codec import decode_model
from fedn.launcher import FederationSpec
from tests.federations import serving

CLIENT = "examples.digits:DigitsClient"


def accuracy_of(blob: bytes) -> float:
    from examples.digits import DigitsClient

    params = {k: v.copy() for k, v in decode_model(blob).items()}
    return DigitsClient(split="test").evaluate(params, {})[2]["accuracy"]


@pytest.fixture(params=["embedded", "mongo+minio"])
def federation(request, tmp_path: Path):
    """The same federation on the embedded stores and on MongoDB + S3 (SecantusDB + nanio)."""
    urls = {}
    if request.param == "mongo+minio":
        urls = {"state_url": request.getfixturevalue("mongo_url"), "models_url": request.getfixturevalue("s3_url")}
    spec = FederationSpec(client=CLIENT, num_combiners=2, num_clients=4, workdir=tmp_path / "fed", **urls)
    with serving(spec) as fed:
        yield fed
