"""A real ClientRuntime against a hostile combiner: a fake gRPC combiner on 127.0.0.1 hands it malformed
tasks, broken or lying model streams and stray upload grants. Whatever it sends, the client must not crash,
hang, allocate a size it was only told about, or train on garbage: it reports the round as failed (or
ignores a message that concerns nothing it does, or leaves a stream whose task it cannot read), logs one
printable line, and trains the next valid task, whose update must reach the combiner."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc
import numpy as np
import pytest

import client.download
from client import Client, ClientRuntime
from fedn import wire
from fedn.codec import TensorSpec, encode_payload, sha256_hex
from fedn.compression import encode_model_downlink, parse_compression
from fedn.v1 import fedn_pb2 as pb
from fedn.v1 import fedn_pb2_grpc as pb_grpc

MODEL = {"w": np.arange(4, dtype=np.float32), "steps": np.array([3], np.int64)}
WAIT_S = 20.0  # every wait is bounded; a healthy run needs a fraction of it

Served = Callable[[pb.DownloadModelRequest, grpc.ServicerContext], Iterator[pb.ModelChunk]]


def _chunks(header: wire.ModelHeaderInfo, *data: bytes) -> list[pb.ModelChunk]:
    return [pb.ModelChunk(header=wire.model_header_to_proto(header)), *(pb.ModelChunk(data=d) for d in data)]


def _serve(messages: list[pb.ModelChunk]) -> Served:
    return lambda request, context: iter(messages)


def _good(request: pb.DownloadModelRequest, context) -> Iterator[pb.ModelChunk]:
    """The valid model, in the downlink codec asked for."""
    manifest, payload = encode_payload(MODEL)
    if request.compression:
        payload = encode_model_downlink(MODEL, manifest, parse_compression(request.compression))
    yield from _chunks(wire.ModelHeaderInfo(request.model_id, manifest, sha256_hex(payload), len(payload)), payload)


class FakeCombiner(pb_grpc.CombinerServicer):
    """Sends what a test puts on the newest task stream (heartbeats in between), serves models by id, and
    records downloads, upload requests, updates, failures and evaluations."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.streams: list[queue.Queue] = []  # one outbox per TaskStream call, the newest last
        self.models: dict[str, Served] = {}
        self.refuse_grant: set[str] = set()  # rounds whose RequestUpload answers "wait for a grant"
        self.updates: list[str] = []
        self.failures: list[tuple[str, str]] = []
        self.evaluations: list[str] = []
        self.upload_requests: list[str] = []

    def send(self, *tasks: pb.Task) -> None:
        with self.lock:
            outbox = self.streams[-1]
        for task in tasks:
            outbox.put(task)

    def TaskStream(self, request, context):
        outbox: queue.Queue = queue.Queue()
        with self.lock:
            self.streams.append(outbox)
        while context.is_active():
            try:
                yield outbox.get(timeout=0.2)
            except queue.Empty:
                yield pb.Task(kind=pb.TASK_KIND_HEARTBEAT, timeout_s=0.2)

    def DownloadModel(self, request, context):
        served = self.models.get(request.model_id, _good if request.model_id.startswith("good") else None)
        if served is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "no such model")
        yield from served(request, context)

    def RequestUpload(self, request, context):
        with self.lock:
            self.upload_requests.append(request.round_id)
        return pb.UploadGrant(granted=request.round_id not in self.refuse_grant)

    def UploadUpdate(self, request_iterator, context):
        round_id = next(request_iterator).header.round_id
        for _ in request_iterator:
            pass
        with self.lock:
            self.updates.append(round_id)
            return pb.UploadUpdateResponse(round_id=round_id, accepted_updates=len(self.updates))

    def ReportFailure(self, request, context):
        with self.lock:
            self.failures.append((request.round_id, request.error))
        return pb.ReportFailureResponse()

    def ReportEvaluation(self, request, context):
        with self.lock:
            self.evaluations.append(request.round_id)
        return pb.EvaluationReportResponse(accepted_evaluations=len(self.evaluations))


class Trivial(Client):
    """Adds 1 to each float tensor (times ``config["scale"]`` first, if given); records each task's tag."""

    def __init__(self) -> None:
        self.tags: list[object] = []

    def train(self, params, config):
        self.tags.append(config.get("tag"))
        scale = np.float32(config.get("scale", 1.0))
        return {k: v * scale + 1 if v.dtype.kind == "f" else v for k, v in params.items()}, 3, {"loss": 0.5}

    def evaluate(self, params, config):
        self.tags.append(config.get("tag"))
        return 0.5, 3, {}


class Reducer:
    def __init__(self, port: int) -> None:
        self.port, self.calls = port, 0

    def assign_client(self, name, client_id=None):
        self.calls += 1
        return {"client_id": "site-1", "combiner_id": "hostile", "combiner_address": f"127.0.0.1:{self.port}"}


def _wait(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Rig:
    def __init__(self, fake: FakeCombiner, user: Trivial, thread: threading.Thread, caplog) -> None:
        self.fake, self.user, self.thread, self.caplog = fake, user, thread, caplog
        self._ok = 0

    def train(self, round_id: str, model_id: str = "good", timeout_s: float = 20.0, **fields) -> pb.Task:
        return pb.Task(
            kind=fields.pop("kind", pb.TASK_KIND_TRAIN),
            round_id=round_id,
            session_id="s1",
            model_id=model_id,
            timeout_s=timeout_s,
            round_index=fields.pop("round_index", 1),
            config=fields.pop("config", {"tag": pb.ConfigValue(string_value=round_id[:40])}),
            **fields,
        )

    def failure(self, round_id: str) -> str:
        """The reason the client reported for ``round_id``: one printable line."""
        _wait(lambda: any(r == round_id for r, _ in self.fake.failures), f"a failure reported for {round_id}")
        reasons = [e for r, e in self.fake.failures if r == round_id]
        assert len(reasons) == 1 and reasons[0].isprintable() and len(reasons[0]) < 2000, reasons
        return reasons[0]

    def left_and_came_back(self, streams_before: int) -> None:
        """The client left the stream (a task it cannot read) and connected again."""
        _wait(lambda: len(self.fake.streams) > streams_before, "the client to reconnect")

    def trains_next(self) -> None:
        """A valid task on the newest stream is trained and its update arrives."""
        self._ok += 1
        round_id = f"ok-{self._ok}"
        self.fake.send(self.train(round_id))
        _wait(lambda: round_id in self.fake.updates, f"the update of {round_id}")
        assert self.thread.is_alive()

    def logs_are_single_lines(self) -> None:
        for record in self.caplog.records:
            if record.name.startswith("client") and record.levelno >= logging.WARNING:
                text = record.getMessage()
                assert text.isprintable() and len(text) < 2000, text[:300]


@pytest.fixture
def rig(caplog):
    caplog.set_level(logging.INFO, logger="client")
    fake = FakeCombiner()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    pb_grpc.add_CombinerServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    user = Trivial()
    runtime = ClientRuntime(user, Reducer(port), name="site-a", backoff_max_s=0.05)
    thread = threading.Thread(target=runtime.run, daemon=True)
    thread.start()
    try:
        _wait(lambda: fake.streams, "the client to connect")
        yield Rig(fake, user, thread, caplog)
    finally:
        runtime.stop()
        thread.join(15)
        server.stop(0)
    assert not thread.is_alive(), "the runtime did not stop"


# -- tasks ---------------------------------------------------------------------------------------------


def test_tasks_of_no_known_kind_and_stray_grants_are_ignored(rig):
    rig.fake.send(
        rig.train("x1", kind=99),
        rig.train("x2", kind=pb.TASK_KIND_UNSPECIFIED),
        pb.Task(kind=pb.TASK_KIND_UPLOAD_GRANT, round_id="never-trained"),
        pb.Task(kind=pb.TASK_KIND_UPLOAD_GRANT),
    )
    rig.trains_next()
    assert rig.user.tags == ["ok-1"] and rig.fake.failures == [] and len(rig.fake.streams) == 1


BAD_TASKS = {
    "empty round_id": {"round_id": ""},
    "empty model_id": {"model_id": ""},
    "10,000-char round_id": {"round_id": "r" * 10_000},
    "10,000-char model_id": {"model_id": "good" + "m" * 10_000},
    "line break in round_id": {"round_id": "r1\nERROR forged log line"},
    "control character in model_id": {"model_id": "good\x1b[2J"},
    "negative round_index": {"round_index": -1},
    "evaluate task with an empty model_id": {"kind": pb.TASK_KIND_EVALUATE, "model_id": ""},
    "timeout_s NaN": {"timeout_s": float("nan")},
    "timeout_s inf": {"timeout_s": float("inf")},
    "timeout_s -1": {"timeout_s": -1.0},
    "timeout_s 1e308": {"timeout_s": 1e308},
    "config NaN": {"config": {"lr": pb.ConfigValue(double_value=float("nan"))}},
    "config value with no kind": {"config": {"lr": pb.ConfigValue()}},
    "config key with a line break": {"config": {"a\nb": pb.ConfigValue(int_value=1)}},
    "1000-char compression": {"compression": "int8:" + "x" * 995},
    "1000-char downlink": {"downlink_compression": "float16" * 143},
    "unprintable compression": {"compression": "int8\x00"},
}


@pytest.mark.parametrize("fields", BAD_TASKS.values(), ids=BAD_TASKS.keys())
def test_a_task_it_cannot_read_is_left_with_one_log_line(rig, fields):
    # past fedn.wire's bounds or client.checks': the client leaves the stream (as for any task it cannot
    # read), asks the reducer again (here: the same combiner) and trains what comes next, never the bad task
    fields = {"round_id": "bad", "model_id": "good", **fields}
    before = len(rig.fake.streams)
    rig.fake.send(rig.train(fields.pop("round_id"), fields.pop("model_id"), **fields))
    rig.left_and_came_back(before)
    rig.trains_next()
    assert rig.user.tags == ["ok-1"] and rig.fake.updates == ["ok-1"]
    assert "sent a task this client cannot take" in rig.caplog.text
    rig.logs_are_single_lines()


def test_a_task_over_the_message_limit_ends_the_stream_and_the_client_comes_back(rig):
    before = len(rig.fake.streams)
    rig.fake.send(rig.train("huge", config={"blob": pb.ConfigValue(string_value="x" * (9 << 20))}))
    rig.left_and_came_back(before)
    rig.trains_next()
    assert rig.user.tags == ["ok-1"]


ODD_BUT_VALID = {
    "round_index 2**63-1": {"round_index": 2**63 - 1},
    "config 1e308 and int64 max": {
        "config": {"big": pb.ConfigValue(double_value=1e308), "n": pb.ConfigValue(int_value=2**63 - 1)}
    },
    "10,000 config keys": {"config": {f"k{i}": pb.ConfigValue(int_value=i) for i in range(10_000)}},
    "timeout_s 0 (one second)": {"timeout_s": 0.0},
}


@pytest.mark.parametrize("fields", ODD_BUT_VALID.values(), ids=ODD_BUT_VALID.keys())
def test_an_odd_but_valid_task_is_trained(rig, fields):
    rig.fake.send(rig.train("odd", **fields))
    _wait(lambda: "odd" in rig.fake.updates, "the odd task's update")
    rig.trains_next()


BAD_CODECS = {
    "unknown uplink codec": ({"compression": "zstd"}, "unknown compression codec"),
    "garbage uplink": ({"compression": "int8:block=-5,,x"}, "compression"),
    "unknown downlink codec": ({"downlink_compression": "gzip:level=9"}, "unknown compression codec"),
    "topk downlink": ({"downlink_compression": "topk:ratio=0.5"}, "topk cannot compress a whole model"),
    "uplink option of another codec": ({"compression": "float16:warmup=3"}, "warmup applies to topk only"),
    "negative int8 block": ({"compression": "int8:block=-5"}, "greater than or equal to 0"),
}


@pytest.mark.parametrize("fields, reason", BAD_CODECS.values(), ids=BAD_CODECS.keys())
def test_a_codec_it_cannot_use_fails_the_round(rig, fields, reason):
    rig.fake.send(rig.train("codec", **fields))
    assert reason in rig.failure("codec")
    rig.trains_next()
    assert rig.user.tags == ["ok-1"]
    rig.logs_are_single_lines()


def test_an_update_its_codec_cannot_carry_fails_the_round(rig):
    # a model of large values and float16 updates: halving it is a delta past float16's range; the
    # client refuses to clip it, and must report that rather than die of it
    big = {"w": np.full(4, 2e5, np.float32), "steps": np.array([3], np.int64)}
    manifest, payload = encode_payload(big)
    header = wire.ModelHeaderInfo("big", manifest, sha256_hex(payload), len(payload))
    rig.fake.models["big"] = _serve(_chunks(header, payload))
    config = {"tag": pb.ConfigValue(string_value="half"), "scale": pb.ConfigValue(double_value=0.5)}
    rig.fake.send(rig.train("half", "big", compression="float16", config=config))
    assert "float16" in rig.failure("half")
    rig.trains_next()
    rig.logs_are_single_lines()


# -- downloads -----------------------------------------------------------------------------------------


def _raw(arrays=None, *, model_id="m", declared=None, sha=None, manifest=None, data=None) -> list[pb.ModelChunk]:
    real_manifest, payload = encode_payload(MODEL if arrays is None else arrays)
    payload = payload if data is None else data
    header = wire.ModelHeaderInfo(
        model_id,
        real_manifest if manifest is None else manifest,
        sha or sha256_hex(payload),
        len(payload) if declared is None else declared,
    )
    return _chunks(header, payload)


_, PAYLOAD = encode_payload(MODEL)
SHORT, LONG = PAYLOAD[:-3], PAYLOAD + b"\0" * 8
W = TensorSpec("w", "float32", (4,))


def _int8_overflow() -> list[pb.ModelChunk]:
    # one block, its scale at the largest an encoder makes (float32 max / 127), and a code of -128
    # (never encoded): it decodes past float32
    scale = np.array([np.finfo(np.float32).max / 127], "<f4").tobytes()
    payload = scale + np.array([-128, 0, 1, 2], np.int8).tobytes()
    header = wire.ModelHeaderInfo("m", [W], sha256_hex(payload), len(payload))
    return _chunks(header, payload)


def _errors_mid_way(request, context):
    messages = _raw()
    yield messages[0]
    yield pb.ModelChunk(data=PAYLOAD[:8])
    context.abort(grpc.StatusCode.UNAVAILABLE, "combiner going away\nERROR forged log line")


def _never_sends(request, context):
    while context.is_active():
        time.sleep(0.05)
    yield from ()


BAD_DOWNLOADS = {
    "sha256 of other data": (_raw(sha="0" * 64), "sha256 does not match"),
    "sha256 not hex": (_raw(sha="Z" * 64), "sha256"),
    "declared more than sent": (_raw(declared=len(PAYLOAD), data=SHORT, sha=sha256_hex(PAYLOAD)), "ended after"),
    "sent more than declared": (_raw(declared=len(PAYLOAD), data=LONG), "more than the announced"),
    "declares 2**62 bytes": (_raw(declared=2**62), "larger than this client accepts"),
    "declares 3 GiB, under the limit, for 24 bytes": (_raw(declared=3 << 30), "manifest"),
    "declares -1 bytes": (_raw(declared=-1), "payload_bytes"),
    "header repeated": (_raw()[:1] + _raw(), "header"),
    "an empty message after the header": ([*_raw()[:1], pb.ModelChunk(), *_raw()[1:]], "header"),
    "data before the header": ([pb.ModelChunk(data=PAYLOAD), *_raw()], "did not start with a header"),
    "no message at all": ([], "did not start with a header"),
    "negative dimension": (_raw(manifest=[TensorSpec("w", "float32", (-4,))]), "dimensions"),
    "huge dimension": (_raw(manifest=[TensorSpec("w", "float32", (1 << 40, 1 << 40))]), "bytes"),
    "33 dimensions": (_raw(manifest=[TensorSpec("w", "float32", (1,) * 33)]), "dimensions"),
    "unknown dtype": (_raw(manifest=[TensorSpec("w", "bogus", (4,))]), "dtype"),
    "unsupported numpy dtype": (_raw(manifest=[TensorSpec("w", "complex64", (2,))]), "dtype"),
    "dtype full of junk": (_raw(manifest=[TensorSpec("w", "f4;rm -rf", (4,))]), "dtype"),
    "no tensors": (_raw(manifest=[]), "tensor"),
    "a tensor named twice": (
        _raw({"w": np.zeros(2, np.float32)}, manifest=[TensorSpec("w", "float32", (1,))] * 2),
        "twice",
    ),
    "another model than asked for": (_raw(model_id="other"), "other"),
    "a NaN in a tensor": (_raw({"w": np.array([0, np.nan, 1, 2], np.float32)}), "NaN"),
    "an infinity in a tensor": (_raw({"w": np.array([0, np.inf, 1, 2], np.float32)}), "NaN or Inf"),
    "errors mid-way with UNAVAILABLE": (_errors_mid_way, "UNAVAILABLE"),
}


@pytest.mark.parametrize("served, reason", BAD_DOWNLOADS.values(), ids=BAD_DOWNLOADS.keys())
def test_a_bad_model_stream_fails_the_round_and_the_next_task_trains(rig, monkeypatch, served, reason):
    sizes: list[int] = []
    assembler = client.download.ChunkAssembler

    def recording(expected_bytes, *args, **kw):
        sizes.append(expected_bytes)
        return assembler(expected_bytes, *args, **kw)

    monkeypatch.setattr(client.download, "ChunkAssembler", recording)
    rig.fake.models["m"] = served if callable(served) else _serve(served)
    rig.fake.send(rig.train("bad", "m"))
    got = rig.failure("bad")
    assert reason in got and got.startswith("could not download the global model: "), got
    assert "bad" not in rig.user.tags  # nothing trained on it
    rig.trains_next()
    assert rig.fake.updates == ["ok-1"] and max(sizes) <= 1 << 20  # no buffer of a size only declared
    rig.logs_are_single_lines()


def test_a_model_larger_than_memory_is_refused_not_a_crash():
    # a client that lifted its limit, and a manifest of 2**62 bytes that agrees with its header: no
    # process has that memory, so the download fails the round instead of raising MemoryError
    header = wire.ModelHeaderInfo("m1", [TensorSpec("w", "float32", (1 << 30, 1 << 30))], "0" * 64, 1 << 62)

    class Stub:
        failures: list[str] = []

        def DownloadModel(self, request, timeout=None):
            return _Call(_chunks(header))

        def ReportFailure(self, request, timeout=None):
            self.failures.append(request.error)
            return pb.ReportFailureResponse()

    stub, user = Stub(), Trivial()
    runtime = ClientRuntime(user, reducer=None, name="c1", max_model_bytes=1 << 63)
    runtime.client_id = "c1"
    assert runtime._run_train_task(stub, wire.TaskInfo("train", "r1", "s1", "m1", 1, 60.0, {}), inbox=None) is None
    assert user.tags == [] and len(stub.failures) == 1 and "cannot be held in memory" in stub.failures[0]


class _Call:
    """A DownloadModel call's messages, without gRPC."""

    def __init__(self, messages: list[pb.ModelChunk]) -> None:
        self._messages = iter(messages)

    def __iter__(self):
        return self

    def __next__(self) -> pb.ModelChunk:
        return next(self._messages)

    def cancel(self) -> bool:
        return True


def test_an_int8_model_that_decodes_past_float32_fails_the_round(rig):
    rig.fake.models["m"] = _serve(_int8_overflow())
    rig.fake.send(rig.train("bad", "m", downlink_compression="int8:block=256"))
    assert "beyond float32's range" in rig.failure("bad")
    rig.trains_next()


def test_a_model_stream_that_never_sends_is_given_up_at_the_task_timeout(rig):
    rig.fake.models["m"] = _never_sends
    rig.fake.send(rig.train("bad", "m", timeout_s=1.5))
    assert "DEADLINE_EXCEEDED" in rig.failure("bad")
    rig.trains_next()


def test_a_bad_model_to_evaluate_fails_the_evaluation(rig):
    rig.fake.models["m"] = _serve(_raw({"w": np.array([np.nan, 0, 0, 0], np.float32)}))
    rig.fake.send(rig.train("eval", "m", kind=pb.TASK_KIND_EVALUATE))
    assert "could not download the model to evaluate" in rig.failure("eval")
    assert rig.fake.evaluations == [] and "eval" not in rig.user.tags
    rig.trains_next()


# -- upload grants -------------------------------------------------------------------------------------


def test_a_grant_for_its_own_round_lets_the_update_go(rig):
    rig.fake.refuse_grant.add("wait")
    rig.fake.send(rig.train("wait"))
    _wait(lambda: "wait" in rig.fake.upload_requests, "the upload request")
    rig.fake.send(pb.Task(kind=pb.TASK_KIND_UPLOAD_GRANT, round_id="other"))
    rig.fake.send(pb.Task(kind=pb.TASK_KIND_UPLOAD_GRANT, round_id="wait"))
    _wait(lambda: "wait" in rig.fake.updates, "the granted update")
    rig.trains_next()


def test_stray_grants_while_waiting_do_not_hold_the_client_past_its_deadline(rig):
    # no grant for its round ever comes, but grants for other rounds arrive faster than the client's
    # shortest wait: it must still give up when the task's deadline passes
    rig.fake.refuse_grant.add("wait")
    rig.fake.send(rig.train("wait", timeout_s=1.0))
    _wait(lambda: "wait" in rig.fake.upload_requests, "the upload request")
    stop = threading.Event()

    def flood() -> None:
        while not stop.is_set():
            rig.fake.send(pb.Task(kind=pb.TASK_KIND_UPLOAD_GRANT, round_id="someone-else"))
            time.sleep(0.02)

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    try:
        _wait(lambda: "no upload slot before the deadline" in rig.caplog.text, "the client to give up waiting")
    finally:
        stop.set()
        flooder.join(5)
    rig.trains_next()
    assert "wait" not in rig.fake.updates
