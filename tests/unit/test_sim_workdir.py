"""A run's /dev/shm directory is swept once its process is gone (tmpfs pages are RAM, and a killed run
cannot remove its own), and the worker count is bounded before anything is allocated for it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fedn.errors import InvalidArgument
from fedn.sim import Simulation, parse_spec
from fedn.sim.pool import MAX_LOCAL_WORKERS, WorkerPool
from fedn.sim.ray_pool import RayOptions, ray_backend
from fedn.sim.workdir import PREFIX, run_workdir, sweep_stale_workdirs


def _dead_pid() -> int:
    """A PID no process has now."""
    for pid in range(4_000_000, 3_000_000, -1):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            continue
    raise AssertionError("no free PID found")


def _namespace() -> str:
    return os.readlink("/proc/self/ns/pid")


def _run_dir(root: Path, name: str, owner: str | None) -> Path:
    path = root / f"{PREFIX}{name}"
    (path / "state").mkdir(parents=True)
    (path / "model.bin").write_bytes(b"\0" * 4096)
    if owner is not None:
        (path / "owner").write_text(owner)
    return path


def test_only_the_directories_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead = _run_dir(tmp_path, "dead", f"{_dead_pid()} {_namespace()}")
    alive = _run_dir(tmp_path, "alive", f"{os.getpid()} {_namespace()}")
    elsewhere = _run_dir(tmp_path, "elsewhere", f"{_dead_pid()} pid:[1]")  # another PID namespace's
    unowned = _run_dir(tmp_path, "unowned", None)  # being made, or an older version's
    garbled = _run_dir(tmp_path, "garbled", "not a pid")
    other = tmp_path / "not-ours"
    other.mkdir()
    (other / "owner").write_text(f"{_dead_pid()} {_namespace()}")
    assert sweep_stale_workdirs(tmp_path) == [dead]
    assert not dead.exists()
    assert all(p.exists() for p in (alive, elsewhere, unowned, garbled, other))


def test_a_new_run_directory_names_its_process_and_sweeps_first(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("fedn.sim.workdir.shm_dir", lambda: str(tmp_path))
    dead = _run_dir(tmp_path, "dead", f"{_dead_pid()} {_namespace()}")
    with run_workdir() as made:
        assert Path(made).parent == tmp_path and Path(made).name.startswith(PREFIX)
        assert (Path(made) / "owner").read_text() == f"{os.getpid()} {_namespace()}"
        assert not dead.exists()
        assert sweep_stale_workdirs(tmp_path) == []  # its own process is alive
    assert not Path(made).exists()


def _spec(**fields):
    fields = {
        "client": "bench.workloads:SyntheticClient",
        "client_args": {"params": 10},
        "clients": 4,
        "rounds": 1,
    } | fields
    return parse_spec(**fields)


def test_more_workers_than_clients_run_as_many_as_there_are_clients() -> None:
    sim = Simulation(_spec(workers=100_000_000_000))
    assert sim.spec.workers == 4
    assert Simulation(_spec(workers=3)).spec.workers == 3


def test_more_local_workers_than_one_machine_runs_are_refused_before_anything_is_made(tmp_path: Path) -> None:
    spec = _spec(clients=10_000, workers=MAX_LOCAL_WORKERS + 1)
    with pytest.raises(InvalidArgument, match=f"{MAX_LOCAL_WORKERS + 1} worker processes is more than"):
        WorkerPool(workdir=tmp_path, spec=spec, manifest=[], workers=spec.workers, mergeable=True)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "options",
    [
        RayOptions(client_cpus=float("nan")),
        RayOptions(client_cpus=float("inf")),
        RayOptions(client_gpus=float("nan")),
        RayOptions(client_gpus=-1.0),
        RayOptions(timeout_s=float("nan")),
        RayOptions(timeout_s=float("inf")),
        RayOptions(start_timeout_s=0.0),
    ],
)
def test_ray_resources_and_timeouts_must_be_finite(options: RayOptions) -> None:
    with pytest.raises(InvalidArgument, match="must be"):
        ray_backend(options)
