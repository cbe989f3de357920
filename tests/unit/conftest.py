"""Unit tests open no network sockets and start no processes: this guard fails a test that tries.

Local socket pairs (AF_UNIX) stay allowed: an asyncio event loop wakes itself through one, and
unit tests drive the combiner's runs on a loop with a ManualClock.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from fedn.store import LocalModelStore, SQLiteStateStore


class _Forbidden(RuntimeError):
    pass


def _refuse(*args, **kwargs):
    raise _Forbidden("unit tests must not open sockets or start processes; move this test to tests/integration")


class _LocalOnlySocket(socket.socket):
    """socket.socket for AF_UNIX pairs only (asyncio's self-pipe); any network family is refused."""

    def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
        if family != socket.AF_UNIX:
            _refuse()
        super().__init__(family, type, proto, fileno)


@pytest.fixture(autouse=True)
def _no_network_or_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "socket", _LocalOnlySocket)
    monkeypatch.setattr(socket, "create_connection", _refuse)
    monkeypatch.setattr(subprocess, "Popen", _refuse)


@pytest.fixture
def stores(tmp_path: Path) -> tuple[SQLiteStateStore, LocalModelStore]:
    """An in-memory state store and a model store in a temporary directory."""
    return SQLiteStateStore(":memory:"), LocalModelStore(tmp_path / "models")
