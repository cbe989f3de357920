"""Unit tests open no sockets and start no processes: this guard fails a test that tries."""

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


@pytest.fixture(autouse=True)
def _no_network_or_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "socket", _refuse)
    monkeypatch.setattr(socket, "create_connection", _refuse)
    monkeypatch.setattr(subprocess, "Popen", _refuse)


@pytest.fixture
def stores(tmp_path: Path) -> tuple[SQLiteStateStore, LocalModelStore]:
    """An in-memory state store and a model store in a temporary directory."""
    return SQLiteStateStore(":memory:"), LocalModelStore(tmp_path / "models")
