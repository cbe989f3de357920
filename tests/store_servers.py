"""Real MongoDB-wire (SecantusDB) and S3 (nanio) servers for tests, on 127.0.0.1 and free ports.

Test-only: neither is a runtime dependency. Every process started here is stopped by its context
manager, also when start-up fails.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fedn.launcher import free_port

__all__ = ["RunningServer", "mongo_process", "mongo_server", "s3_server"]

_BIN = Path(sys.executable).parent


def _wait_for_port(host: str, port: int, proc: subprocess.Popen, log: Path, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"test server exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"test server not listening on {port} after {timeout_s:.0f}s:\n{log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)


@contextmanager
def _process(
    argv: list[str], log: Path, host: str, port: int, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})}
        )
    try:
        _wait_for_port(host, port, proc, log)
        yield proc
    finally:
        _stop(proc)


@dataclass(frozen=True)
class RunningServer:
    """A test server's URL and its process, for tests that kill it (``process.kill()`` is kill -9)."""

    url: str
    process: subprocess.Popen


@contextmanager
def mongo_process(workdir: Path, host: str = "127.0.0.1", prefix: Sequence[str] = ()) -> Iterator[RunningServer]:
    """SecantusDB with authentication on, its data in ``workdir``.

    Started again on the same ``workdir`` (after a stop or a kill), it keeps its port, its user and
    its data, so a test can check what survived.
    """
    import pymongo

    workdir.mkdir(parents=True, exist_ok=True)
    saved = workdir / "server.json"
    first_start = not saved.exists()
    if first_start:
        saved.write_text(json.dumps({"port": free_port(), "user": "fedn", "password": secrets.token_urlsafe(12)}))
    port, user, password = (json.loads(saved.read_text())[k] for k in ("port", "user", "password"))
    argv = [
        *prefix,
        str(_BIN / "secantusd-py"),
        "--host",
        host,
        "--port",
        str(port),
        "--storage-path",
        str(workdir / "data"),
        "--log-level",
        "WARNING",
    ]
    if first_start:  # users are provisioned without auth, then the server restarts with --auth (SecantusDB's way)
        with _process(argv, workdir / "mongo.log", host, port):
            client = pymongo.MongoClient(f"mongodb://{host}:{port}", serverSelectionTimeoutMS=10_000)
            client.admin.command("createUser", user, pwd=password, roles=["root"])
            client.close()
    with _process([*argv, "--auth"], workdir / "mongo.log", host, port) as proc:
        yield RunningServer(f"mongodb://{user}:{password}@{host}:{port}/fedn?authSource=admin", proc)


@contextmanager
def mongo_server(workdir: Path, host: str = "127.0.0.1", prefix: Sequence[str] = ()) -> Iterator[str]:
    """SecantusDB with authentication on; yields ``mongodb://user:password@host:port/fedn?authSource=admin``.

    ``prefix`` runs it elsewhere, e.g. ``["ip", "netns", "exec", ns]`` with that namespace's ``host``.
    """
    with mongo_process(workdir, host, prefix) as server:
        yield server.url


@contextmanager
def s3_server(workdir: Path, host: str = "127.0.0.1", prefix: Sequence[str] = ()) -> Iterator[tuple[str, str, str]]:
    """nanio, which checks SigV4 signatures; yields ``(endpoint, access_key, secret_key)``."""
    workdir.mkdir(parents=True, exist_ok=True)
    port, access, secret = free_port(), "fedn" + secrets.token_hex(4), secrets.token_urlsafe(24)
    argv = [
        *prefix,
        str(_BIN / "nanio"),
        "serve",
        "--host",
        host,
        "--port",
        str(port),
        "--data-dir",
        str(workdir / "data"),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    env = {"NANIO_ACCESS_KEY": access, "NANIO_SECRET_KEY": secret}
    with _process(argv, workdir / "s3.log", host, port, env=env):
        yield f"{host}:{port}", access, secret
