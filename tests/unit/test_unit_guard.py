"""The unit-test guard refuses network sockets and processes, and still lets an event loop run."""

from __future__ import annotations

import asyncio
import socket
import subprocess

import pytest


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_network_sockets_are_refused(family):
    with pytest.raises(RuntimeError, match="tests/integration"):
        socket.socket(family, socket.SOCK_STREAM)


def test_connections_and_processes_are_refused():
    with pytest.raises(RuntimeError, match="tests/integration"):
        socket.create_connection(("127.0.0.1", 9))
    with pytest.raises(RuntimeError, match="tests/integration"):
        subprocess.Popen(["true"])


def test_an_event_loop_runs():
    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    assert asyncio.run(answer()) == 42
