"""Does the dashboard's event stream slow rounds?

A small federation runs the same session ``--repeats`` times without viewers and as often with
``--viewers`` open event streams, interleaved (without then with, then with then without, ...), so a
machine that speeds up or slows down during the run weighs on both alike. The viewers run in their own
process, one asyncio loop, as browsers elsewhere would: their reading is not the reducer's cost. Prints
one JSON line: the median round time of all rounds with and without viewers, their ratio, the noise
(how far the medians of the runs without viewers stray from each other), the reducer's CPU per session,
and how many events each viewer received.

``--train-s`` (default 0.2) makes each client's train step take that long: rounds of about 0.25 s, so the
watcher (one store read a second) publishes during the session and every viewer receives events. With
``--train-s 0`` rounds take a few milliseconds and a session ends between two reads.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.workloads import SyntheticClient
from fedn.auth.tokens import Role
from fedn.cli.sessions import wait_for_session
from fedn.codec import encode_model
from fedn.launcher import FederationSpec, LocalFederation
from fedn.sim.memory import cpu_s

__all__ = ["SlowSyntheticClient", "main"]

_TOKEN_ENV = "FEDN_BENCH_VIEWER_TOKEN"


class SlowSyntheticClient(SyntheticClient):
    """SyntheticClient whose train step takes ``train_s`` seconds of wall time (a sleep, not CPU)."""

    def __init__(self, train_s: float = 0.0, **kw) -> None:
        super().__init__(**kw)
        self.train_s = train_s

    def train(self, params: dict[str, np.ndarray], config: dict) -> tuple[dict[str, np.ndarray], int, dict[str, float]]:
        time.sleep(self.train_s)
        return super().train(params, config)


async def _view(url: str, viewers: int, ca: str) -> list[int]:
    """Open ``viewers`` event streams, say so on stdout, read them until SIGTERM; events per stream."""
    import httpx

    from fedn.tls import client_ssl_context

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    headers = {"Authorization": f"Bearer {os.environ[_TOKEN_ENV]}"}
    counts = [0] * viewers
    opened = 0

    async def one(http: httpx.AsyncClient, i: int) -> None:
        nonlocal opened
        async with http.stream("GET", f"{url}/api/v1/events", headers=headers) as res:
            res.raise_for_status()
            opened += 1
            if opened == viewers:
                print("open", flush=True)
            async for line in res.aiter_lines():
                counts[i] += line.startswith("event:")

    timeout = httpx.Timeout(10.0, read=None)
    limits = httpx.Limits(max_connections=viewers + 1)
    async with httpx.AsyncClient(verify=client_ssl_context(ca), timeout=timeout, limits=limits) as http:
        tasks = [asyncio.create_task(one(http, i)) for i in range(viewers)]
        waiter = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        failed = [t for t in done if t is not waiter]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if failed and failed[0].exception() is not None:
            raise failed[0].exception()
    return counts


class _Viewers:
    """The viewers' process: started, opened, then stopped with what each viewer received."""

    def __init__(self, fed: LocalFederation, viewers: int) -> None:
        assert fed.secrets is not None
        env = {**os.environ, _TOKEN_ENV: fed.secrets.token(Role.VIEWER, "bench-viewer")}
        argv = [sys.executable, "-m", "bench.dashboard_viewers", "--as-viewers", str(viewers)]
        argv += ["--url", fed.reducer_url, "--ca", str(fed.secrets.ca_file)]
        self._proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().strip()
        if line != "open":
            self._proc.kill()
            raise RuntimeError(f"the viewers did not open their streams (got {line!r})")

    def stop(self) -> list[int]:
        self._proc.send_signal(signal.SIGTERM)
        out, _ = self._proc.communicate(timeout=30)
        return json.loads(out.strip().splitlines()[-1])


def _session(fed: LocalFederation, seed_id: str, rounds: int) -> tuple[list[float], float]:
    """Each round's time of one session, and the reducer's CPU seconds while it ran."""
    assert fed.reducer is not None and fed.reducer.pid
    with fed.api() as api:
        cpu_before = cpu_s(fed.reducer.pid)
        session = api.start_session(rounds=rounds, min_clients=2, round_timeout_s=60.0, model_id=seed_id)
        wait_for_session(api, session.id, poll_s=0.2, timeout_s=600)
        cpu = cpu_s(fed.reducer.pid) - cpu_before
        return [r.duration_s or 0.0 for r in api.list_rounds(session.id)], cpu


def measure(viewers: int, rounds: int, repeats: int, train_s: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="fedn-bench-dash-") as work:
        spec = FederationSpec(
            client="bench.dashboard_viewers:SlowSyntheticClient",
            client_args=[f"train_s={train_s}"],
            num_combiners=1,
            num_clients=2,
            workdir=Path(work),
        )
        with LocalFederation(spec) as fed:
            fed.start_clients()
            with fed.api() as api:
                seed = api.upload_model(encode_model(SyntheticClient().initial_parameters()))
            _session(fed, seed.id, 2)  # warm-up: model caches, connections
            runs: dict[bool, list[tuple[list[float], float]]] = {False: [], True: []}
            received: list[int] = []
            for repeat in range(repeats):
                for with_viewers in (False, True) if repeat % 2 == 0 else (True, False):
                    if not with_viewers:
                        runs[False].append(_session(fed, seed.id, rounds))
                        continue
                    open_viewers = _Viewers(fed, viewers)
                    try:
                        runs[True].append(_session(fed, seed.id, rounds))
                    finally:
                        received += open_viewers.stop()
    medians = {mode: [statistics.median(times) for times, _ in rs] for mode, rs in runs.items()}
    pooled = {mode: statistics.median(t for times, _ in rs for t in times) for mode, rs in runs.items()}
    cpu = {mode: [round(c, 3) for _, c in rs] for mode, rs in runs.items()}
    # the noise: how far apart two runs without viewers can be, as a ratio of their medians
    noise = max(medians[False]) / min(medians[False]) - 1 if min(medians[False]) > 0 else None
    ratio = pooled[True] / pooled[False] if pooled[False] else None
    return {
        "bench": "dashboard_viewers",
        "viewers": viewers,
        "rounds": rounds,
        "repeats": repeats,
        "train_s": train_s,
        "median_round_s_without": round(pooled[False], 4),
        "median_round_s_with": round(pooled[True], 4),
        "ratio": round(ratio, 3) if ratio else None,
        "noise": round(noise, 3) if noise is not None else None,
        "within_noise": ratio is not None and noise is not None and abs(ratio - 1) <= noise,
        "run_medians_without": [round(m, 4) for m in medians[False]],
        "run_medians_with": [round(m, 4) for m in medians[True]],
        "reducer_cpu_s_without": cpu[False],
        "reducer_cpu_s_with": cpu[True],
        "viewers_finished": len(received),
        "events_per_viewer_min": min(received, default=0),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--viewers", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3, help="sessions with and without viewers, interleaved")
    parser.add_argument(
        "--train-s", type=float, default=0.2, help="seconds each client's train step takes (0: rounds of a few ms)"
    )
    parser.add_argument("--as-viewers", type=int, help=argparse.SUPPRESS)  # the viewers' process
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--ca", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.as_viewers:
        print(json.dumps(asyncio.run(_view(args.url, args.as_viewers, args.ca))), flush=True)
        return 0
    print(json.dumps(measure(args.viewers, args.rounds, args.repeats, args.train_s)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
