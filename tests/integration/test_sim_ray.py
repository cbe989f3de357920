"""The simulator on a Ray cluster of two (or three) nodes started on this machine: the same figures as the
local backend, a node killed mid-round, resources the cluster cannot give, and no Ray at all."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

# Ray's nodes on 127.0.0.1, not this host's outward address (read when ray is first imported)
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import pytest

from bench.workloads import SyntheticClient
from fedn.cli import main
from fedn.errors import FailedPrecondition
from fedn.sim import Simulation, parse_spec
from fedn.sim.ray_pool import RayOptions, ray_backend

SYNTH = "bench.workloads:SyntheticClient"
_STORE_BYTES = 100 * 2**20


class SlowClient(SyntheticClient):
    """A SyntheticClient that takes ``delay_s`` per train and leaves a file named by its Ray node in ``marks``,
    so a test knows a node is mid-round."""

    def __init__(
        self, params: int = 1000, partition: int = 0, num_partitions: int = 1, delay_s: float = 0.0, marks: str = ""
    ) -> None:
        super().__init__(params=params, partition=partition, num_partitions=num_partitions)
        self.delay_s, self.marks = delay_s, marks

    def train(self, params, config):
        import ray

        (Path(self.marks) / ray.get_runtime_context().get_node_id()).touch()
        time.sleep(self.delay_s)
        return super().train(params, config)


@pytest.fixture(scope="module")
def cluster() -> Iterator[object]:
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'fedn[ray]'")
    from ray.cluster_utils import Cluster

    node = {"num_cpus": 1, "object_store_memory": _STORE_BYTES}
    # a dead node is noticed in about a second, not the default half minute
    config = {"health_check_period_ms": 500, "health_check_failure_threshold": 2}
    c = Cluster(initialize_head=True, head_node_args={**node, "_system_config": config})
    try:
        c.add_node(**node)
        ray.init(address=c.address, include_dashboard=False, log_to_driver=False)
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def _spec(**overrides):
    fields = dict(
        client=SYNTH,
        client_args={"params": 1000},
        eval_args=None,
        clients=30,
        combiners=2,
        rounds=3,
        fraction=0.6,
        seed=5,
        workers=2,
        heterogeneity={"dropout": 0.3, "dropout_share": 0.5},
    )
    return parse_spec(**{**fields, **overrides})


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_ray_equals_local_by_seed(cluster: object, mode: str) -> None:
    extra = {"mode": "async", "buffer_size": 4, "rounds": 5} if mode == "async" else {}
    spec = _spec(**extra)
    local = Simulation(spec).run()
    on_ray = Simulation(spec, make_pool=ray_backend(RayOptions())).run()
    figures = ("updates", "dropped", "failed", "train_loss", "eval_loss", "eval_distance", "eval_clients")
    assert sum(r["dropped"] for r in local.rounds) > 0  # the drop-outs are in play
    assert any("eval_loss" in r for r in local.rounds)  # and the federated evaluation
    assert [[r.get(k) for k in figures] for r in on_ray.rounds] == [[r.get(k) for k in figures] for r in local.rounds]
    assert on_ray.model["w"].tobytes() == local.model["w"].tobytes()
    assert on_ray.failures == local.failures == []


def test_a_node_killed_mid_round_has_its_clients_retried(cluster, tmp_path: Path) -> None:
    victim = cluster.add_node(num_cpus=1, object_store_memory=_STORE_BYTES)
    cluster.wait_for_nodes()
    marks = tmp_path / "marks"
    marks.mkdir()
    args = {"params": 1000, "delay_s": 0.1, "marks": str(marks)}
    spec = _spec(client=f"{__name__}:SlowClient", client_args=args, workers=3, clients=24, heterogeneity={})
    killed, finished = threading.Event(), threading.Event()

    def kill_when_busy() -> None:
        while not finished.wait(0.05):  # the run is bounded, so is this
            if (marks / victim.node_id).exists():
                cluster.remove_node(victim, allow_graceful=False)
                killed.set()
                return

    killer = threading.Thread(target=kill_when_busy, daemon=True)
    killer.start()
    try:
        on_ray = Simulation(spec, make_pool=ray_backend(RayOptions(timeout_s=120))).run()
    finally:
        finished.set()
        killer.join(60)
    assert killed.is_set(), f"the third node never trained a client: {sorted(p.name for p in marks.iterdir())}"
    assert [r["status"] for r in on_ray.rounds] == ["done"] * 3
    # its share ran again on a live actor: nothing failed and the figures are the local backend's
    assert on_ray.failures == []
    local = Simulation(spec).run()
    assert on_ray.model["w"].tobytes() == local.model["w"].tobytes()
    assert [r["train_loss"] for r in on_ray.rounds] == [r["train_loss"] for r in local.rounds]


@pytest.mark.parametrize(("cpus", "gpus"), [(0.0, 1.0), (2.0, 0.0)])
def test_resources_the_cluster_cannot_give_are_refused(cluster: object, cpus: float, gpus: float) -> None:
    sim = Simulation(_spec(), make_pool=ray_backend(RayOptions(client_cpus=cpus, client_gpus=gpus)))
    with pytest.raises(FailedPrecondition, match="holds 0 workers") as info:
        sim.run()
    assert "\n" not in info.value.message


def test_the_cli_passes_the_resources_to_ray(cluster: object, tmp_path: Path, capsys) -> None:
    argv = ["simulate", "--client", SYNTH, "--clients", "4", "--rounds", "1", "--workers", "2", "--no-progress"]
    argv += ["--client-arg", "params=100", "--out", str(tmp_path / "run"), "--backend", "ray"]
    assert main([*argv, "--client-gpus", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the Ray cluster") and "--client-gpus 1" in err and "\n" not in err
    assert main(argv) == 0
    assert (tmp_path / "run" / "metrics.json").exists()


def test_without_ray_the_backend_says_what_to_install(monkeypatch, capsys, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails, as where it is not installed
    argv = ["simulate", "--client", SYNTH, "--clients", "2", "--rounds", "1", "--out", str(tmp_path), "--backend"]
    assert main([*argv, "ray"]) == 2
    assert capsys.readouterr().err.strip() == "error: --backend ray needs Ray: pip install 'fedn[ray]'"
    assert main([*argv, "local", "--address", "127.0.0.1:6379"]) == 2
    assert "for --backend ray" in capsys.readouterr().err
