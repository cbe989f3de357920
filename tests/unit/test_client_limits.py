"""The client refuses a global model larger than it accepts before downloading it, and backs off with full
jitter when it cannot get or keep a combiner. No gRPC: a fake stub and an injected wait and random source."""

from __future__ import annotations

import numpy as np

from client.cli import ClientSettings
from client.runtime import ClientRuntime
from fedn import wire
from fedn.codec import encode_payload, sha256_hex
from fedn.errors import Unavailable
from fedn.v1 import fedn_pb2 as pb


class _Stream:
    """A DownloadModel call: its header, then data that must never be read."""

    def __init__(self, header: wire.ModelHeaderInfo) -> None:
        self._messages = iter([pb.ModelChunk(header=wire.model_header_to_proto(header))])
        self.cancelled = False
        self.data_read = False

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return next(self._messages)
        except StopIteration:
            self.data_read = True
            raise

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class _Stub:
    def __init__(self, header: wire.ModelHeaderInfo) -> None:
        self.stream = _Stream(header)
        self.failures: list[str] = []

    def DownloadModel(self, request, timeout=None):
        return self.stream

    def ReportFailure(self, request, timeout=None):
        self.failures.append(request.error)
        return pb.ReportFailureResponse()


class _Trains:
    trained = False

    def train(self, params, config):
        self.trained = True
        return params, 1, {}


def test_a_model_larger_than_max_model_bytes_is_refused_from_its_header_and_the_task_fails():
    manifest, data = encode_payload({"w": np.zeros(4, np.float32)})
    header = wire.ModelHeaderInfo("m1", manifest, sha256_hex(data), 5 << 30)  # announces 5 GiB
    stub, user = _Stub(header), _Trains()
    runtime = ClientRuntime(user, reducer=None, name="c1", max_model_bytes=4 << 30)
    runtime.client_id = "c1"
    task = wire.TaskInfo("train", "r1", "s1", "m1", 1, 60.0, {})
    assert runtime._run_train_task(stub, task, inbox=None) is None
    assert stub.stream.cancelled and not stub.stream.data_read and not user.trained
    assert len(stub.failures) == 1 and "larger than this client accepts" in stub.failures[0]
    assert ClientSettings().max_model_bytes == 4 << 30


class _Random:
    """Records each uniform(a, b) asked for and answers its upper end (the longest wait)."""

    def __init__(self) -> None:
        self.bounds: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.bounds.append((a, b))
        return b


class _Reducer:
    def __init__(self, runtime_box: list, failures: int, then_assign: int = 0) -> None:
        self.box, self.failures, self.assigns = runtime_box, failures, then_assign

    def assign_client(self, name, client_id=None):
        if self.failures:
            self.failures -= 1
            raise Unavailable("no live combiner")
        if self.assigns:
            self.assigns -= 1
            return {"client_id": "c1", "combiner_id": "comb", "combiner_address": "127.0.0.1:1"}
        self.box[0].stop()
        raise Unavailable("stopping")


def _runtime(reducer: _Reducer, rng: _Random, waits: list[float], box: list) -> ClientRuntime:
    runtime = ClientRuntime(
        object(), reducer, name="c1", backoff_max_s=5.0, rng=rng, wait=lambda s: waits.append(s) or False
    )
    box.append(runtime)
    return runtime


def test_reconnect_back_off_is_exponential_capped_and_fully_jittered():
    rng, waits, box = _Random(), [], []
    runtime = _runtime(_Reducer(box, failures=6), rng, waits, box)
    runtime.run()
    assert rng.bounds[:6] == [(0, 0.5), (0, 1.0), (0, 2.0), (0, 4.0), (0, 5.0), (0, 5.0)]
    assert waits[:6] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_a_combiner_left_at_once_is_asked_for_again_after_a_growing_jittered_wait():
    rng, waits, box = _Random(), [], []
    runtime = _runtime(_Reducer(box, failures=0, then_assign=3), rng, waits, box)
    runtime._serve = lambda address: "RESOURCE_EXHAUSTED: combiner is full"  # never connected
    runtime.run()
    assert rng.bounds[:3] == [(0, 0.5), (0, 1.0), (0, 2.0)]
