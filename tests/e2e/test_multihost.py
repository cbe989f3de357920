"""Reducer + stores, two combiners and the clients on four separate network hosts (Linux namespaces)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest

from fedn.cli.sessions import wait_for_session
from fedn.codec import encode_model
from fedn.launcher import FederationSpec, LocalFederation
from fedn.records import RoundStatus, SessionStatus
from tests.e2e.netns import network_hosts, skip_reason
from tests.store_servers import mongo_server, s3_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


@pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")
def test_two_rounds_across_four_hosts(tmp_path: Path):
    with network_hosts(["reducer", "combiner-0", "combiner-1", "clients"]) as hosts:

        def placement(name: str) -> tuple[list[str], str]:
            ns, address = hosts[name if name in hosts else "clients"]
            return ["ip", "netns", "exec", ns], address

        # MongoDB and the S3 server run on the reducer's host; combiners reach them across the subnet.
        ns, address = hosts["reducer"]
        prefix = ["ip", "netns", "exec", ns]
        with (
            mongo_server(tmp_path / "mongo", host=address, prefix=prefix) as mongo_url,
            s3_server(tmp_path / "s3", host=address, prefix=prefix) as (endpoint, access, secret),
        ):
            models_url = f"s3://{quote(access, safe='')}:{quote(secret, safe='')}@{endpoint}/fedn"
            spec = FederationSpec(
                client="examples.digits:DigitsClient",
                num_combiners=2,
                num_clients=4,
                workdir=tmp_path / "fed",
                placement=placement,
                state_url=mongo_url,
                models_url=models_url,
            )
            codes = _train_two_rounds(spec, hosts)
    assert set(codes.values()) == {0}, codes


def _train_two_rounds(spec: FederationSpec, hosts: dict[str, tuple[str, str]]) -> dict[str, int | None]:
    from examples.digits import DigitsClient

    with LocalFederation(spec) as fed:
        fed.start_clients()
        with fed.api() as api:
            combiners = {c.id: c.address for c in api.list_combiners()}
            assert combiners["combiner-0"].startswith(hosts["combiner-0"][1] + ":")
            assert combiners["combiner-1"].startswith(hosts["combiner-1"][1] + ":")
            seed = api.upload_model(encode_model(DigitsClient().initial_parameters()))
            session = api.start_session(rounds=2, min_clients=4, round_timeout_s=120.0, model_id=seed.id)
            session = wait_for_session(api, session.id, poll_s=0.2, timeout_s=300)
            assert session.status == SessionStatus.DONE, session.error
            rounds = api.list_rounds(session.id)
            assert [r.status for r in rounds] == [RoundStatus.DONE] * 2
            assert all(sorted(r.combiners) == ["combiner-0", "combiner-1"] and r.num_updates == 4 for r in rounds)
            assert api.download_model(rounds[-1].model_out)
        return fed.stop()
