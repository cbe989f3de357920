"""A simulation worker process: trains its share of each round's clients and folds them per combiner group.

The global model is a read-only memory map the driver rewrites between rounds; a worker writes one
float64 partial per combiner group into its own result map and answers with the weights. For an
evaluation it answers with each client's checked figures. A client
object (and its data) exists only while it trains or evaluates.
"""

from __future__ import annotations

import json
import logging
import os
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from fedn.aggregation import MetricsAccumulator, make_aggregator
from fedn.codec import NamedArrays, TensorSpec, decode_payload, payload_bytes
from fedn.compression import (
    decode_model_downlink,
    decode_update,
    downlink_payload_bytes,
    encode_model_downlink,
    encode_update,
    parse_compression,
)
from fedn.errors import FednError, InvalidArgument
from fedn.loading import load_object
from fedn.sim.client_state import ClientStateStore
from fedn.sim.spec import ClientFactory, SimulationSpec
from fedn.train_result import check_evaluate_result, check_train_result

__all__ = ["Task", "Worker", "flat_size", "main", "model_path", "progress_path", "result_path"]

logger = logging.getLogger(__name__)

# one client's work in a batch: (client, combiner group, slowdown), and for an async task also the
# (scale, staleness) of its delta
Task = tuple[int, int, float] | tuple[int, int, float, float, int]


def model_path(workdir: Path) -> Path:
    return workdir / "global.bin"


def result_path(workdir: Path, worker: int) -> Path:
    return workdir / f"partials-{worker}.bin"


def flat_size(manifest: list[TensorSpec]) -> int:
    return sum(spec.size for spec in manifest)


def progress_path(workdir: Path) -> Path:
    return workdir / "progress.bin"


def client_state_dir(workdir: Path) -> Path:
    """Where the per-client state (error-feedback residuals) of a run lives: every worker opens it."""
    return workdir / "client-state"


def main(argv: list[str] | None = None) -> None:
    """Worker entry (argv: INDEX FD WORKDIR): serve round requests on socket FD until told to stop.

    Workers are plain subprocesses, not multiprocessing children, so a user's script needs no
    ``if __name__ == "__main__"`` guard and nothing of the driver's state is inherited.
    """
    import sys

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # before the client module imports torch
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    index, fd, workdir = (sys.argv[1:] if argv is None else argv)[:3]
    conn = Connection(int(fd))
    try:
        setup = json.loads((Path(workdir) / "setup.json").read_text())
        spec = SimulationSpec.model_validate(setup["spec"])
        worker = _open_worker(int(index), Path(workdir), spec, [TensorSpec.from_dict(d) for d in setup["manifest"]])
    except BaseException:
        conn.send({"ok": False, "error": traceback.format_exc(limit=5)})
        return
    conn.send({"ok": True})
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if msg["op"] == "stop":
            return
        try:
            run = worker.run_evaluation if msg["op"] == "evaluate" else worker.run_round
            reply = run(msg["round"], msg["config"], msg["tasks"])
        except BaseException:
            reply = {"ok": False, "error": traceback.format_exc(limit=5)}
        conn.send(reply)


def _open_worker(index: int, workdir: Path, spec: SimulationSpec, manifest: list[TensorSpec]) -> Worker:
    """A worker on the driver's memory maps in ``workdir``."""
    return Worker(
        index,
        spec,
        manifest,
        model=np.memmap(model_path(workdir), dtype=np.uint8, mode="r", shape=(payload_bytes(manifest),)),
        progress=np.memmap(progress_path(workdir), dtype=np.int64, mode="r+", shape=(spec.workers,)),
        results=np.memmap(
            result_path(workdir, index), dtype=np.float64, mode="r+", shape=(spec.combiners, flat_size(manifest))
        ),
        state_dir=client_state_dir(workdir),
    )


class Worker:
    """One worker's share of each batch. ``model`` is the published payload, ``progress`` one counter per
    worker, ``results`` a (combiners, flat size) float64 row per group: the driver's memory maps in a
    worker process, plain arrays in a Ray actor (:mod:`fedn.sim.ray_pool`).

    With compression, each client trains from the global model as it arrives (downlink-decoded), and its
    update is encoded and folded from its decoded payload by fedn.compression, as in a deployment.
    Error-feedback residuals live in a :class:`ClientStateStore` in ``state_dir``, shared by all workers.
    """

    def __init__(
        self,
        index: int,
        spec: SimulationSpec,
        manifest: list[TensorSpec],
        *,
        model: np.ndarray,
        progress: np.ndarray,
        results: np.ndarray,
        state_dir: Path | None = None,
    ) -> None:
        self.index, self.spec, self.manifest = index, spec, manifest
        self.make_client = ClientFactory(load_object(spec.client), spec)
        self.model, self.progress, self.results = model, progress, results
        self.uplink = parse_compression(spec.compression)
        self.downlink = parse_compression(spec.downlink_compression)
        self.residuals: ClientStateStore | None = None
        self.velocities: ClientStateStore | None = None  # top-k's momentum correction
        self._payload_bytes = payload_bytes(manifest)
        self._residual_names = [s.name for s in manifest if np.dtype(s.dtype).kind == "f"]
        if not self.uplink.lossless and self.uplink.error_feedback and self._residual_names:
            if state_dir is None:
                raise InvalidArgument(
                    f"compression {self.uplink.text()} keeps error feedback per client, which needs a state directory"
                )
            layout = {s.name: s.shape for s in manifest if s.name in self._residual_names}
            self.residuals = ClientStateStore(state_dir, spec.clients, layout)
            if self.uplink.momentum:
                self.velocities = ClientStateStore(state_dir / "velocity", spec.clients, layout)

    def received_model(self, global_arrays: NamedArrays) -> NamedArrays:
        """The global model as a client receives it: through the downlink codec (deterministic)."""
        if self.downlink.lossless:
            return global_arrays
        payload = encode_model_downlink(global_arrays, self.manifest, self.downlink)
        return decode_model_downlink(payload, self.manifest, self.downlink)

    def _upload(self, cid: int, round_index: int, arrays: NamedArrays, received: NamedArrays) -> tuple[Any, int]:
        """What the combiner folds of client ``cid``'s update, and the bytes the client sent."""
        if self.uplink.lossless:
            return arrays, self._payload_bytes
        uplink = self.uplink.for_round(round_index)  # a top-k warm-up's share of this round
        residual = self._kept(self.residuals, cid)
        velocity = self._kept(self.velocities, cid)
        rng = np.random.default_rng([self.spec.seed, round_index, cid, 0xC0DEC])  # stochastic rounding
        payload = encode_update(arrays, received, self.manifest, uplink, rng=rng, residual=residual, velocity=velocity)
        for store, states in ((self.residuals, residual), (self.velocities, velocity)):
            if store is not None and states is not None:
                for name, value in states.items():
                    store.put(cid, name, value)
        return decode_update(payload, received, self.manifest, uplink), len(payload)

    def _kept(self, store: ClientStateStore | None, cid: int) -> dict[str, np.ndarray] | None:
        """Client ``cid``'s states in ``store`` by tensor (those it has), or None without a store."""
        if store is None:
            return None
        kept = {}
        for name in self._residual_names:
            value = store.get(cid, name)
            if value is not None:
                kept[name] = value
        return kept

    def run_round(self, round_index: int, config: dict, tasks: list[Task]) -> dict:
        spec, h = self.spec, self.spec.heterogeneity
        global_arrays = self.received_model(decode_payload(self.manifest, self.model))
        epochs = float(config.get("epochs", 1) or 1)
        uplink_bytes, uploads = 0, 0
        groups: dict[int, Any] = {}
        metrics: dict[int, MetricsAccumulator] = {}
        failures: list[tuple[int, str]] = []
        stragglers, slowest = 0, 0.0
        for done, (cid, group, slowdown, *fold) in enumerate(tasks, start=1):
            # an async task carries (scale, staleness): its update is folded as a scaled delta from the model
            scale, staleness = fold if fold else (None, None)
            try:
                client = self.make_client(cid)
                params = {name: np.array(a) for name, a in global_arrays.items()}  # the client may write to them
                arrays, weight, client_metrics = check_train_result(
                    client.train(params, {**config, "round": round_index}), self.manifest
                )
                del client, params
                arrays, sent = self._upload(cid, round_index, arrays, global_arrays)
                uplink_bytes, uploads = uplink_bytes + sent, uploads + 1
                modelled = (h.task_time_s or h.example_time_s * weight * epochs) * slowdown
                if h.deadline_s is not None and modelled > h.deadline_s:
                    stragglers += 1
                else:
                    slowest = max(slowest, modelled)
                    if group not in groups:
                        groups[group] = make_aggregator(spec.aggregator, self.manifest, spec.aggregator_config)
                        metrics[group] = MetricsAccumulator()
                    if scale is None:
                        groups[group].add(arrays, weight)
                    else:
                        groups[group].add(arrays, weight, base=global_arrays, scale=scale)
                        client_metrics = {**client_metrics, "staleness": staleness}
                    metrics[group].add(client_metrics, weight)
            except FednError as exc:
                failures.append((cid, f"update rejected: {exc.message}"))
            except Exception as exc:
                failures.append((cid, f"{type(exc).__name__}: {exc}"))
            self.progress[self.index] = done
        out: dict[int, dict] = {}
        for group, agg in groups.items():
            if agg.count == 0:
                continue
            partial = agg.partial()
            row, offset = self.results[group], 0
            for spec_ in self.manifest:
                row[offset : offset + spec_.size] = np.asarray(partial.arrays[spec_.name], dtype=np.float64).reshape(-1)
                offset += spec_.size
            out[group] = {
                "weight": partial.total_weight,
                "count": partial.count,
                "metrics": {k: v.model_dump() for k, v in metrics[group].summary().items()},
            }
        return {
            "ok": True,
            "groups": out,
            "failures": failures,
            "stragglers": stragglers,
            "slowest_s": slowest,
            "uplink_bytes": uplink_bytes,
            "uploads": uploads,
            "downlink_bytes": len(tasks) * downlink_payload_bytes(self.manifest, self.downlink),
        }

    def run_evaluation(self, round_index: int, config: dict, tasks: list[Task]) -> dict:
        """Each task's client evaluates the published model; the answer lists each client's checked figures
        (the driver folds them as a combiner does). A client that raises, or returns what
        :func:`check_evaluate_result` refuses, is a failure, as the client runtime reports it."""
        global_arrays = self.received_model(decode_payload(self.manifest, self.model))
        evaluations: list[tuple[int, int, float, float, dict[str, float]]] = []
        failures: list[tuple[int, str]] = []
        for done, (cid, group, *_) in enumerate(tasks, start=1):
            try:
                client = self.make_client(cid)
                params = {name: np.array(a) for name, a in global_arrays.items()}  # the client may write to them
                loss, weight, figures = check_evaluate_result(client.evaluate(params, {**config, "round": round_index}))
                del client, params
            except Exception as exc:
                failures.append((cid, f"evaluate: {type(exc).__name__}: {exc}"))
            else:
                evaluations.append((cid, group, loss, weight, figures))
            self.progress[self.index] = done
        return {"ok": True, "failures": failures, "evaluations": evaluations}
