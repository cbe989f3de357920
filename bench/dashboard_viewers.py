"""Does the dashboard's event stream slow rounds? A small federation runs the same session without viewers,
then with ``--viewers`` open event streams (each read by a thread of this process); prints one JSON line
with the median round time of each run and how many events the viewers received."""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.workloads import SyntheticClient
from fedn.auth.tokens import Role
from fedn.cli.sessions import wait_for_session
from fedn.codec import encode_model
from fedn.launcher import FederationSpec, LocalFederation
from fedn.sim.memory import cpu_s
from fedn.tls import client_ssl_context

__all__ = ["main"]


def _viewer(
    url: str, token: str, ca: str, stop: threading.Event, received: list[int], opened: threading.Barrier
) -> None:
    count = 0
    headers = {"Authorization": f"Bearer {token}"}
    http = httpx.Client(verify=client_ssl_context(ca), timeout=httpx.Timeout(10.0, read=30.0))
    with http, http.stream("GET", f"{url}/api/v1/events", headers=headers) as res:
        res.raise_for_status()
        opened.wait(60)
        for line in res.iter_lines():
            count += line.startswith("event:")
            if stop.is_set():
                break
    received.append(count)


def _median_round_s(fed: LocalFederation, seed_id: str, rounds: int) -> tuple[float, float]:
    """The median round time of a session, and the reducer's CPU seconds while it ran: the viewers'
    own threads share this machine's cores, the reducer's CPU is what the stream costs the server."""
    assert fed.reducer is not None and fed.reducer.pid
    with fed.api() as api:
        cpu_before = cpu_s(fed.reducer.pid)
        session = api.start_session(rounds=rounds, min_clients=2, round_timeout_s=60.0, model_id=seed_id)
        wait_for_session(api, session.id, poll_s=0.2, timeout_s=600)
        cpu = cpu_s(fed.reducer.pid) - cpu_before
        return statistics.median(r.duration_s or 0.0 for r in api.list_rounds(session.id)), cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--viewers", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fedn-bench-dash-") as work:
        spec = FederationSpec(
            client="bench.workloads:SyntheticClient", num_combiners=1, num_clients=2, workdir=Path(work)
        )
        with LocalFederation(spec) as fed:
            fed.start_clients()
            with fed.api() as api:
                seed = api.upload_model(encode_model(SyntheticClient().initial_parameters()))
            _median_round_s(fed, seed.id, 2)  # warm-up: model caches, connections
            without, cpu_without = _median_round_s(fed, seed.id, args.rounds)
            assert fed.secrets is not None
            token, ca = fed.secrets.token(Role.VIEWER, "bench-viewer"), str(fed.secrets.ca_file)
            stop, received = threading.Event(), []
            opened = threading.Barrier(args.viewers + 1)
            threads = [
                threading.Thread(target=_viewer, args=(fed.reducer_url, token, ca, stop, received, opened), daemon=True)
                for _ in range(args.viewers)
            ]
            for t in threads:
                t.start()
            opened.wait(60)
            started = time.monotonic()
            with_viewers, cpu_with = _median_round_s(fed, seed.id, args.rounds)
            elapsed = time.monotonic() - started
            stop.set()
            with fed.api() as api:  # one more change, so every viewer reads and sees the stop flag
                api.upload_model(encode_model(SyntheticClient().initial_parameters()))
            for t in threads:
                t.join(30)
    print(
        json.dumps(
            {
                "bench": "dashboard_viewers",
                "viewers": args.viewers,
                "rounds": args.rounds,
                "median_round_s_without": round(without, 4),
                "median_round_s_with": round(with_viewers, 4),
                "ratio": round(with_viewers / without, 3) if without else None,
                "session_s_with": round(elapsed, 2),
                "reducer_cpu_s_without": round(cpu_without, 3),
                "reducer_cpu_s_with": round(cpu_with, 3),
                "viewers_finished": len(received),
                "events_per_viewer_min": min(received, default=0),
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
