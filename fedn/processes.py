"""Child processes the launcher owns: one command, its log file, and how it is stopped."""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedn.forkserver import ForkedProcess, ForkServer

__all__ = ["ManagedProcess", "free_port"]

logger = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class ManagedProcess:
    """One child process, its command and its log file; ``forkserver`` forks a ``python -m fedn ...``
    command from a warm interpreter instead of starting a new one (fedn.forkserver)."""

    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen | ForkedProcess | None = None
    terminated: bool = False
    forkserver: ForkServer | None = None

    def start(self, env: dict[str, str]) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.forkserver is not None and self.forkserver.can_fork(self.argv):
            from fedn.forkserver import ForkedProcess

            self.popen = ForkedProcess(self.forkserver, self.forkserver.spawn(self.argv, env, self.log_path))
            return
        log = self.log_path.open("ab")
        try:
            self.popen = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        finally:
            log.close()

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def is_running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, signum: int) -> None:
        if self.is_running():
            self.popen.send_signal(signum)
            self.terminated = self.terminated or signum == signal.SIGTERM

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; returns the exit code."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            # One SIGTERM only: a second one landing while Python finalizes (default handlers
            # restored) would kill a process that was exiting cleanly.
            if not self.terminated:
                self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop within %.0fs; killing it", self.name, timeout_s)
                self.popen.kill()
                self.popen.wait(timeout_s)
        return self.popen.returncode

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
