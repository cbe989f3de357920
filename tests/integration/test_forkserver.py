"""The fork server: processes forked from one warm interpreter behave as `python -m fedn ...` would."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest

from fedn.forkserver import ForkedProcess, ForkServer
from fedn.processes import ManagedProcess, free_port

FEDN = [sys.executable, "-m", "fedn"]


@pytest.fixture
def server():
    srv = ForkServer(["fedn.api_client", "reducer.cli"], dict(os.environ))
    yield srv
    srv.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_forked_command_runs_with_its_own_environment_log_and_exit_code(server: ForkServer, tmp_path: Path):
    ok = ManagedProcess("version", [*FEDN, "--version"], tmp_path / "version.log", forkserver=server)
    ok.start(dict(os.environ))
    assert isinstance(ok.popen, ForkedProcess) and ok.popen.wait(30) == 0
    assert ok.log_tail().startswith("fedn ")

    env = {**os.environ, "FEDN_REDUCER": "http://127.0.0.1:1"}  # the child's environment, not the server's
    failing = ManagedProcess("list", [*FEDN, "session", "list"], tmp_path / "list.log", forkserver=server)
    failing.start(env)
    assert failing.popen.wait(60) == 2
    assert "127.0.0.1:1" in failing.log_tail()
    failing.signal(signal.SIGTERM)  # reaped already: nothing is signalled, nothing fails


def test_a_forked_server_stops_on_sigterm_and_the_fork_server_stops_what_is_left(server: ForkServer, tmp_path: Path):
    env = {
        **os.environ,
        "FEDN_REDUCER_STATE": f"sqlite:///{tmp_path / 'state.db'}",
        "FEDN_REDUCER_MODELS": (tmp_path / "models").as_uri(),
    }

    def reducer(name: str) -> tuple[ManagedProcess, int]:
        port = free_port()
        argv = [*FEDN, "reducer", "start", "--host", "127.0.0.1", "--port", str(port)]
        proc = ManagedProcess(name, argv, tmp_path / f"{name}.log", forkserver=server)
        proc.start(env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=2).status_code == 200:
                    return proc, port
            except httpx.HTTPError:
                time.sleep(0.2)
        raise AssertionError(f"{name} did not answer: {proc.log_tail()}")

    first, port = reducer("first")
    assert first.is_running() and os.getpgid(first.pid) == first.pid  # a session of its own
    # ps and pgrep -f show the command it runs, not the fork server's
    cmdline = Path(f"/proc/{first.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    assert cmdline == f"{sys.executable} -m fedn reducer start --host 127.0.0.1 --port {port}"
    assert first.stop(30) == 0  # SIGTERM: a clean stop

    second, _ = reducer("second")
    server.close()  # the launcher went away: the server terminates its children
    deadline = time.monotonic() + 30
    while _alive(second.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(second.pid)


def test_commands_that_are_not_fedn_start_as_usual(server: ForkServer, tmp_path: Path):
    proc = ManagedProcess("py", [sys.executable, "-c", "print('plain')"], tmp_path / "py.log", forkserver=server)
    proc.start(dict(os.environ))
    assert not isinstance(proc.popen, ForkedProcess)
    assert proc.popen.wait(30) == 0 and proc.log_tail() == "plain"
