"""Every strategy and every aggregation rule over a real deployment: reducer, 2 combiners, 6 clients."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fedn.cli.sessions import wait_for_session
from fedn.codec import decode_model, encode_model
from fedn.launcher import FederationSpec, LocalFederation
from fedn.records import SessionStatus
from tests.plugin_dist import write_plugin_dist

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

CASES = [
    {"strategy": "fedavg"},
    {"strategy": "fedprox", "strategy_config": {"mu": 0.01}},
    {"strategy": "fedavgm", "strategy_config": {"eta": 1.0, "momentum": 0.5}},
    {"strategy": "fedadagrad", "strategy_config": {"eta": 0.03}},
    {"strategy": "fedadam", "strategy_config": {"eta": 0.03}},
    {"strategy": "fedyogi", "strategy_config": {"eta": 0.03}},
    {"aggregator": "median"},
    {"aggregator": "trimmed_mean", "aggregator_config": {"beta": 0.34}},
    {"aggregator": "krum", "aggregator_config": {"f": 0, "m": 2}, "min_clients": 6},
    {"aggregator": "clipped_mean", "aggregator_config": {"max_norm": 1000.0}},  # the example plug-in
]


def test_every_strategy_and_rule_trains_across_two_combiners(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from examples.digits import DigitsClient

    # fedn registers no plug-in itself; the processes find clipped_mean as a user's installed package
    plugins = str(write_plugin_dist(tmp_path / "plugins"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [plugins, os.environ.get("PYTHONPATH")])))

    spec = FederationSpec(
        client="examples.digits:DigitsClient", num_combiners=2, num_clients=6, workdir=tmp_path / "fed"
    )
    with LocalFederation(spec) as fed:
        fed.start_clients()
        with fed.api() as api:
            seed = api.upload_model(encode_model(DigitsClient().initial_parameters()))
            before = decode_model(api.download_model(seed.id))
            for case in CASES:
                params = {"rounds": 2, "min_clients": 6, "round_timeout_s": 120.0, "model_id": seed.id, **case}
                session = wait_for_session(api, api.start_session(**params).id, poll_s=0.2, timeout_s=240)
                assert session.status == SessionStatus.DONE, (case, session.error)
                rounds = api.list_rounds(session.id)
                assert all(
                    sorted(r.combiners) == ["combiner-0", "combiner-1"] and r.num_updates == 6 for r in rounds
                ), case
                after = decode_model(api.download_model(session.model_id))
                assert any(not np.allclose(before[k], after[k]) for k in before), case
                if "strategy_config" in case and case["strategy"] != "fedprox":
                    assert session.strategy_step == 2 and session.strategy_state_key, case
