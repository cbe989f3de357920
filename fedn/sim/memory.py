"""Resident memory of a process tree, sampled in the background: what a simulation really costs."""

from __future__ import annotations

import os
import resource
import sys
import threading
from pathlib import Path
from types import TracebackType

__all__ = ["RssSampler", "peak_rss_mb", "rss_mb"]


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MiB (0 if it is gone or /proc is absent)."""
    return _status_mb(pid, "VmRSS:")


def peak_rss_mb(pid: int) -> float:
    """The largest resident set ``pid`` has had, in MiB, as the kernel counted it (VmHWM): unlike
    sampling, a spike between two samples is not missed. 0 if it is gone or /proc is absent."""
    return _status_mb(pid, "VmHWM:")


def _status_mb(pid: int, field: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


class RssSampler:
    """Sums the RSS of this process and the watched ones every ``interval_s``; keeps the peak."""

    def __init__(self, interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self._pids: list[int] = []
        self._peak = 0.0
        self._last = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._proc = Path("/proc/self/status").exists()

    def watch(self, pids: list[int]) -> None:
        self._pids = list(pids)
        self._sample()

    def _sample(self) -> None:
        if self._proc:
            total = rss_mb(os.getpid()) + sum(rss_mb(p) for p in self._pids)
        else:  # no /proc: the largest of us and our children, a lower bound
            scale = 1 / 1024 / 1024 if sys.platform == "darwin" else 1 / 1024
            own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
            total = own + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale
        self._last = total
        self._peak = max(self._peak, total)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def current_mb(self) -> float:
        self._sample()
        return round(self._last, 1)

    def peak_mb(self) -> float:
        return round(self._peak, 1)

    def __enter__(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(2)


def cpu_s(pid: int) -> float:
    """CPU seconds ``pid`` has used so far, user and system (0 if it is gone or /proc is absent): with
    several processes on few cores, where the time of a round goes."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0
