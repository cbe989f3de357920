"""/metrics on a real federation (reducer, one combiner, clients as processes, TLS and tokens on):
the counters move during a session, a NaN update is counted with its reason, tokens are checked."""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fedn.auth.tokens import Role
from fedn.codec import encode_model
from fedn.launcher import FederationSpec, LocalFederation

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def _scrape(url: str, token: str | None, ca: Path) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(url, headers=headers, verify=ssl.create_default_context(cafile=str(ca)), timeout=10.0)


def _values(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_move_during_a_session_and_need_a_viewer_token(tmp_path: Path):
    spec = FederationSpec(
        client="tests.sim_clients:NaNClient",  # partition 0 sends NaN: rejected as non_finite
        client_args=["params=1000"],
        num_combiners=1,
        num_clients=3,
        workdir=tmp_path / "fed",
    )
    with LocalFederation(spec) as fed:
        fed.start_clients()
        assert fed.secrets is not None
        ca, admin = fed.secrets.ca_file, fed.secrets.token(Role.ADMIN, "admin")
        viewer, client = fed.secrets.token(Role.VIEWER, "grafana"), fed.secrets.token(Role.CLIENT, "client-0")
        reducer_url = f"{fed.reducer_url}/metrics"
        combiner_url = fed.combiner_metrics_urls["combiner-0"]  # `fedn local` serves every combiner's metrics
        assert combiner_url.startswith("https://127.0.0.1:")

        before_r = _values(_scrape(reducer_url, viewer, ca).text)
        before_c = _values(_scrape(combiner_url, viewer, ca).text)

        api = fed.api()
        seed = api.upload_model(encode_model({"w": np.zeros(1000, np.float32)}))
        session = api.start_session(rounds=2, min_clients=2, round_timeout_s=60.0, model_id=seed.id)
        deadline = time.monotonic() + 180
        while api.get_session(session.id).status in ("pending", "running") and time.monotonic() < deadline:
            time.sleep(0.5)
        ended = api.get_session(session.id)
        assert ended.status == "done", ended.error

        reducer = _scrape(reducer_url, admin, ca)
        combiner = _scrape(combiner_url, admin, ca)
        assert reducer.status_code == 200 and combiner.status_code == 200
        after_r, after_c = _values(reducer.text), _values(combiner.text)

        def moved(after, before, name, labels=()):
            return after.get((name, labels), 0) - before.get((name, labels), 0)

        assert moved(after_r, before_r, "fedn_reducer_rounds_total", (("mode", "sync"), ("outcome", "done"))) == 2
        assert moved(after_r, before_r, "fedn_reducer_merge_seconds_count", (("step", "apply"),)) == 2
        assert after_r[("fedn_reducer_combiners_online", ())] == 1
        assert after_r[("fedn_reducer_clients_connected", ())] == 3
        assert after_r[("fedn_reducer_sessions", (("status", "done"),))] >= 1
        assert moved(after_c, before_c, "fedn_combiner_updates_accepted_total") == 4  # 2 good clients x 2 rounds
        assert moved(after_c, before_c, "fedn_combiner_updates_rejected_total", (("reason", "non_finite"),)) == 2
        assert moved(after_c, before_c, "fedn_combiner_update_bytes_received_total") >= 6 * 4000
        assert moved(after_c, before_c, "fedn_combiner_model_bytes_sent_total") >= 6 * 4000
        assert moved(after_c, before_c, "fedn_combiner_fold_seconds_count") == 4
        assert after_c[("fedn_combiner_clients_connected", ())] == 3

        def rpcs(method: str, code: str) -> float:
            return moved(after_c, before_c, "fedn_combiner_rpcs_total", (("code", code), ("method", method)))

        assert rpcs("RunRound", "OK") == 4  # the reducer's plans: 2 rounds, each evaluated
        assert rpcs("UploadUpdate", "OK") == 4
        assert rpcs("UploadUpdate", "INVALID_ARGUMENT") == 2  # the NaN updates, refused to their sender
        assert rpcs("DownloadModel", "OK") >= 6
        assert rpcs("ReportEvaluation", "OK") == 6  # 3 clients x 2 evaluations
        assert moved(after_c, before_c, "fedn_combiner_rpc_seconds_count", (("method", "RunRound"),)) == 4

        for url in (reducer_url, combiner_url):
            assert _scrape(url, None, ca).status_code == 401
            assert _scrape(url, "not-a-token", ca).status_code == 401
            assert _scrape(url, client, ca).status_code == 403
