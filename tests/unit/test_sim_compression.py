"""The simulator applies the deployment's codec: updates are encoded and folded from their payloads,
clients train from the downlink-decoded model, residuals persist per client, and bytes are counted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedn.codec import TensorSpec, encode_payload, manifest_of, payload_bytes
from fedn.compression import compressed_payload_bytes, downlink_payload_bytes, parse_compression
from fedn.errors import InvalidArgument
from fedn.sim import Simulation, parse_spec
from fedn.sim.client_state import ClientStateStore
from fedn.sim.pool import collect_eval_batch, collect_train_batch
from fedn.sim.ray_pool import RayOptions, RayPool
from fedn.sim.worker import Worker, client_state_dir, flat_size

CLIENT = "tests.unit.test_sim_compression:NoisyClient"
MANIFEST = [TensorSpec("w", "float32", (500,))]


class NoisyClient:
    """Pulls its 500 parameters toward its own target, plus seeded noise: a delta no codec keeps exactly."""

    def __init__(self, partition: int = 0, num_partitions: int = 1, seed: int = 0) -> None:
        self.partition, self.seed = partition, seed
        self.target = np.float32(partition % 10) / 10

    def initial_parameters(self) -> dict[str, np.ndarray]:
        return {"w": np.zeros(500, dtype=np.float32)}

    def train(self, params, config):
        rng = np.random.default_rng([self.seed, self.partition, int(config["round"])])
        w = params["w"]
        w += np.float32(0.1) * (self.target - w) + rng.normal(0, 0.01, 500).astype(np.float32)
        return {"w": w}, 10 + self.partition, {}

    def evaluate(self, params, config):
        return float(np.mean((params["w"] - 0.45) ** 2)), 1, {}


class InProcessPool:
    """One :class:`Worker` in this process, as a Ray actor holds one: the engine's pool without processes."""

    def __init__(self, *, workdir: Path, spec, manifest: list[TensorSpec], workers: int, mergeable: bool) -> None:
        self.spec, self.manifest = spec, manifest
        self.worker = Worker(
            0,
            spec,
            manifest,
            model=np.zeros(0, dtype=np.uint8),
            progress=np.zeros(1, dtype=np.int64),
            results=np.zeros((spec.combiners, flat_size(manifest))),
            state_dir=client_state_dir(workdir),
        )

    def __enter__(self) -> InProcessPool:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def pids(self) -> list[int]:
        return []

    def publish(self, arrays) -> None:
        self.worker.model = np.frombuffer(encode_payload(arrays)[1], dtype=np.uint8)

    def train(self, tasks, *, round_index, config, on_progress=None):
        reply = self.worker.run_round(round_index, config, tasks)
        rows = [{g: self.worker.results[g].copy() for g in reply["groups"]}]
        return collect_train_batch([reply], rows, self.manifest, self.spec.combiners)

    def evaluate(self, tasks, *, round_index, config, on_progress=None):
        return collect_eval_batch([self.worker.run_evaluation(round_index, config, tasks)])


def _run(**overrides):
    spec = parse_spec(
        **{"client": CLIENT, "clients": 6, "combiners": 2, "rounds": 3} | {"eval_args": None, **overrides}
    )
    return spec, Simulation(spec, make_pool=InProcessPool).run()


def test_uncompressed_rows_count_the_raw_payloads() -> None:
    _, result = _run(fraction=0.5)
    raw = payload_bytes(MANIFEST)
    for row in result.rounds:
        assert row["uplink_bytes"] == row["updates"] * raw
        assert row["uplink_bytes_per_client"] == raw
        assert row["downlink_bytes"] == row["selected"] * raw  # the clients that trained got the model
    assert result.traffic == {
        "uplink_bytes": sum(r["uplink_bytes"] for r in result.rounds),
        "uplink_bytes_per_client": raw,
        "downlink_bytes": sum(r["downlink_bytes"] for r in result.rounds),
    }


@pytest.mark.parametrize("codec", ["float16", "int8", "int8:block=64,stochastic=false", "topk:ratio=0.2"])
def test_compressed_runs_send_fewer_bytes_and_land_near_the_uncompressed_model(codec: str) -> None:
    _, plain = _run()
    spec, packed = _run(compression=codec)
    assert spec.compression == parse_compression(codec).text()
    size = compressed_payload_bytes(MANIFEST, parse_compression(codec))
    assert all(row["uplink_bytes_per_client"] == size for row in packed.rounds)
    assert packed.traffic["uplink_bytes"] < plain.traffic["uplink_bytes"]
    assert packed.traffic["downlink_bytes"] == plain.traffic["downlink_bytes"]
    difference = np.abs(packed.model["w"] - plain.model["w"]).max()
    # the clients pull w toward 0.0 .. 0.5: int8 errs by up to 0.05/127 per round, top-k 20% with error
    # feedback delays most of each delta
    assert 0 < difference < (0.15 if codec.startswith("topk") else 0.01)


def test_downlink_compression_is_what_clients_train_from() -> None:
    _, plain = _run()
    _, half = _run(downlink_compression="float16")
    for row in half.rounds:
        assert row["downlink_bytes"] == row["selected"] * downlink_payload_bytes(MANIFEST, parse_compression("float16"))
        assert row["uplink_bytes_per_client"] == payload_bytes(MANIFEST)
    assert not np.array_equal(half.model["w"], plain.model["w"])  # trained from the float16 model
    np.testing.assert_allclose(half.model["w"], plain.model["w"], atol=1e-3)


def _zero_model_worker(spec, state_dir: Path) -> Worker:
    """A worker on a published all-zeros model, with the run's per-client state in ``state_dir``."""
    return Worker(
        0,
        spec,
        MANIFEST,
        model=np.frombuffer(encode_payload({"w": np.zeros(500, dtype=np.float32)})[1], dtype=np.uint8),
        progress=np.zeros(1, dtype=np.int64),
        results=np.zeros((1, 500)),
        state_dir=state_dir,
    )


def test_error_feedback_residuals_persist_per_client_across_rounds_and_workers(tmp_path) -> None:
    spec = parse_spec(client=CLIENT, clients=1000, rounds=2, compression="topk:ratio=0.1")

    def worker() -> Worker:  # a worker process opens the run's store the same way
        return _zero_model_worker(spec, tmp_path)

    first = worker().run_round(1, {}, [(7, 0, 1.0), (900, 0, 1.0)])
    assert first["uploads"] == 2 and first["uplink_bytes"] == 2 * compressed_payload_bytes(
        MANIFEST, parse_compression(spec.compression)
    )
    store = ClientStateStore(tmp_path, 1000, {"w": (500,)})
    assert store.slots() == 2 and 7 in store and 900 in store and 8 not in store
    residual = store.get(7, "w")
    # 50 of 500 entries were sent, the largest; the other 450 wait in the residual
    assert np.count_nonzero(residual) == 450
    delta = NoisyClient(partition=7).train({"w": np.zeros(500, dtype=np.float32)}, {"round": 1})[0]["w"]
    sent = residual == 0
    np.testing.assert_allclose(residual[~sent], delta[~sent], rtol=1e-6)
    assert np.abs(delta[sent]).min() >= np.abs(delta[~sent]).max()
    worker().run_round(2, {}, [(7, 0, 1.0)])  # another worker, a later round: it finds the residual
    assert np.count_nonzero(store.get(7, "w")) < 450 + 50  # sent entries came out of it


def test_momentum_velocities_persist_per_client_beside_the_residuals(tmp_path) -> None:
    spec = parse_spec(client=CLIENT, clients=1000, rounds=2, compression="topk:ratio=0.1,momentum=0.5")

    def worker() -> Worker:
        return _zero_model_worker(spec, tmp_path)

    worker().run_round(1, {}, [(7, 0, 1.0)])
    residuals = ClientStateStore(tmp_path, 1000, {"w": (500,)})
    velocities = ClientStateStore(tmp_path / "velocity", 1000, {"w": (500,)})
    delta1 = NoisyClient(partition=7).train({"w": np.zeros(500, dtype=np.float32)}, {"round": 1})[0]["w"]
    sent = residuals.get(7, "w") == 0
    assert np.count_nonzero(sent) == 50
    # round 1: the velocity is the delta, zeroed where an entry was sent, like the residual
    np.testing.assert_allclose(velocities.get(7, "w"), np.where(sent, 0, delta1), rtol=1e-6)
    worker().run_round(2, {}, [(7, 0, 1.0)])  # another worker, a later round: it finds both states
    delta2 = NoisyClient(partition=7).train({"w": np.zeros(500, dtype=np.float32)}, {"round": 2})[0]["w"]
    velocity2 = velocities.get(7, "w")
    kept = velocity2 != 0
    np.testing.assert_allclose(velocity2[kept], (np.float32(0.5) * np.where(sent, 0, delta1) + delta2)[kept], rtol=1e-5)


def test_momentum_changes_the_run_and_is_reproducible_by_seed() -> None:
    _, plain = _run(compression="topk:ratio=0.05")
    _, first = _run(compression="topk:ratio=0.05,momentum=0.5")
    _, again = _run(compression="topk:ratio=0.05,momentum=0.5")
    np.testing.assert_array_equal(first.model["w"], again.model["w"])
    assert not np.array_equal(first.model["w"], plain.model["w"])


def test_bad_compression_options_are_refused_before_anything_starts() -> None:
    with pytest.raises(InvalidArgument, match="unknown compression codec 'zip'"):
        parse_spec(client=CLIENT, clients=2, rounds=1, compression="zip")
    with pytest.raises(InvalidArgument, match="topk cannot compress a whole model; use it for updates"):
        parse_spec(client=CLIENT, clients=2, rounds=1, downlink_compression="topk")
    spec = parse_spec(client=CLIENT, clients=2, rounds=1, compression="int8")
    with pytest.raises(InvalidArgument, match="needs a state directory"):
        Worker(
            0, spec, MANIFEST, model=np.zeros(0, np.uint8), progress=np.zeros(1, np.int64), results=np.zeros((1, 500))
        )
    with pytest.raises(InvalidArgument, match="--backend ray cannot keep error feedback"):
        RayPool(workdir=Path("."), spec=spec, manifest=MANIFEST, workers=1, mergeable=True, options=RayOptions())
    no_feedback = parse_spec(client=CLIENT, clients=2, rounds=1, compression="int8:error_feedback=false")
    Worker(
        0,
        no_feedback,
        MANIFEST,
        model=np.zeros(0, np.uint8),
        progress=np.zeros(1, np.int64),
        results=np.zeros((1, 500)),
    )
    assert manifest_of({"w": np.zeros(500, np.float32)}) == MANIFEST


def test_async_runs_fold_compressed_deltas_from_the_received_model() -> None:
    _, plain = _run(mode="async", buffer_size=2, rounds=4)
    spec, packed = _run(mode="async", buffer_size=2, rounds=4, compression="int8", downlink_compression="float16")
    assert [r["round"] for r in packed.rounds] == [r["round"] for r in plain.rounds]
    assert all(
        r["uplink_bytes_per_client"] == compressed_payload_bytes(MANIFEST, parse_compression("int8"))
        for r in packed.rounds
    )
    np.testing.assert_allclose(packed.model["w"], plain.model["w"], atol=0.01)
    assert packed.traffic["uplink_bytes"] == sum(r["uplink_bytes"] for r in packed.rounds) > 0
    assert packed.traffic["downlink_bytes"] == sum(r["downlink_bytes"] for r in packed.rounds) > 0
    assert spec.compression == "int8:block=256" and spec.downlink_compression == "float16"
