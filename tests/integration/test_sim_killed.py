"""A simulation killed outright (SIGKILL, the OOM killer) cannot remove its /dev/shm directory, whose
pages are RAM: the next run removes it. And a Ray address where nothing listens is refused at once
instead of retried for ever."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedn.cli import main
from fedn.sim import Simulation, parse_spec
from fedn.sim.workdir import PREFIX, shm_dir

ROOT = Path(__file__).resolve().parents[2]
SYNTH = "bench.workloads:SyntheticClient"


def _owned_by(pid: int) -> Path | None:
    for path in Path(shm_dir() or "/tmp").glob(PREFIX + "*"):
        try:
            if (path / "owner").read_text().split(" ", 1)[0] == str(pid):
                return path
        except OSError:
            continue
    return None


@pytest.mark.skipif(shm_dir() is None, reason="no /dev/shm")
def test_a_killed_runs_directory_is_removed_by_the_next_run(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "fedn", "simulate", "--client", SYNTH, "--client-arg", "params=100000"]
    argv += ["--clients", "50", "--rounds", "100000", "--workers", "2", "--no-progress", "--out", str(tmp_path / "run")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        left = None
        for _ in range(600):  # until its directory holds the model: the run is under way
            left = _owned_by(proc.pid)
            if left is not None and any(left.glob("*")) and proc.poll() is None:
                break
            time.sleep(0.1)
        assert left is not None, proc.stderr.read().decode() if proc.poll() is not None else "no run directory"
        time.sleep(1.0)  # into the rounds
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        proc.stderr.close()
    assert left.exists(), "a SIGKILLed run cannot have removed its directory"

    spec = parse_spec(client=SYNTH, client_args={"params": 10}, eval_args={}, clients=2, rounds=1, workers=1)
    Simulation(spec).run()
    assert not left.exists()


def test_a_ray_address_where_nothing_listens_is_refused_at_once(tmp_path: Path, capsys) -> None:
    with socket.socket() as s:  # a port nothing listens on once it is closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = ["simulate", "--client", SYNTH, "--clients", "2", "--rounds", "1", "--no-progress"]
    argv += ["--out", str(tmp_path), "--backend", "ray", "--address"]
    assert main([*argv, f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after any log line
    assert err.startswith(f"error: cannot connect to the Ray cluster at 127.0.0.1:{port}: ")
    for bad in ("127.0.0.1", "127.0.0.1:x", "127.0.0.1:70000", ":6379"):
        assert main([*argv, bad]) == 2
        assert "--address must be host:port" in capsys.readouterr().err
