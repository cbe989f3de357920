"""The run's directory of memory maps (the model, partials, client state), in RAM-backed /dev/shm
when there is one, so the maps never touch a disk.

Pages on /dev/shm are memory. A run killed before it can remove its directory (SIGKILL, the kernel's
OOM killer, a CI timeout) would keep its model and partials in RAM until the machine restarts. So
each directory records the process that made it, and every new run removes the directories whose
process is gone.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["PREFIX", "run_workdir", "sweep_stale_workdirs"]

PREFIX = "fedn-sim-"
_OWNER = "owner"  # "<pid> <pid namespace>" of the process that made the directory

logger = logging.getLogger(__name__)


def run_workdir() -> tempfile.TemporaryDirectory:
    """A new run directory (removed when the context exits), after the stale ones are swept."""
    root = shm_dir()
    sweep_stale_workdirs(Path(root or tempfile.gettempdir()))
    workdir = tempfile.TemporaryDirectory(prefix=PREFIX, dir=root)
    (Path(workdir.name) / _OWNER).write_text(_me())
    return workdir


def shm_dir() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() else None


def sweep_stale_workdirs(root: Path) -> list[Path]:
    """Remove the run directories under ``root`` whose process has died; the ones removed.

    A directory is judged only by a process of the same PID namespace (a container sharing /dev/shm
    sees other PIDs), and one without a readable owner (being made, or another version's) is left.
    """
    removed = []
    namespace = _namespace()
    for path in root.glob(PREFIX + "*"):
        try:
            pid_text, owner_namespace = (path / _OWNER).read_text().split(" ", 1)
            pid = int(pid_text)
        except (OSError, ValueError):
            continue
        if owner_namespace != namespace or _alive(pid):
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            logger.info("removed %s, left by simulation process %d, which is gone", path, pid)
            removed.append(path)
    return removed


def _me() -> str:
    return f"{os.getpid()} {_namespace()}"


def _namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return "unknown"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
