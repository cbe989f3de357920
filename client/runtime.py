"""The client runtime behind ``fedn client start``: connect, wait for tasks, train, upload, repeat.

It owns one task stream at a time. When the stream breaks or the combiner falls
silent it asks the reducer again, so clients of a dead combiner move to a live one.

Compression (fedn.compression): the client announces the codecs it can use; a task may then ask for
the model in a downlink codec and for the update (the delta from the model as received) in an uplink
codec. What compression lost is kept here, per session, in memory (error feedback) and added to the
next round's delta; it starts from zero when the session (or its codec) changes or the process restarts.
"""

from __future__ import annotations

import itertools
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc
import numpy as np

from client.checks import check_task, describe
from client.download import download_model
from fedn import wire
from fedn.auth.rpc import open_channel
from fedn.chunking import DEFAULT_CHUNK_BYTES
from fedn.codec import NamedArrays, TensorSpec
from fedn.compression import CODECS, Compression, encode_update, parse_compression
from fedn.errors import FednError
from fedn.tls import TLSFiles
from fedn.train_result import check_evaluate_result, check_train_result
from fedn.v1 import fedn_pb2 as pb
from fedn.v1 import fedn_pb2_grpc as pb_grpc
from fedn.wire_eval import EvaluationReportInfo, evaluation_report_to_proto

__all__ = ["AssignsClients", "ClientRuntime", "check_train_result"]

logger = logging.getLogger(__name__)

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 8 << 20),
    ("grpc.max_send_message_length", 8 << 20),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]
# A combiner silent for this many of its heartbeat intervals (each heartbeat tells the interval) is
# taken for gone, unless heartbeat_timeout_s is longer; but never after more than MAX_SILENCE_S.
SILENT_HEARTBEATS = 3.0
MAX_SILENCE_S = 600.0


class AssignsClients(Protocol):
    """What the runtime needs of the reducer (``fedn.api_client.ReducerAPI`` is one)."""

    def assign_client(self, name: str, client_id: str | None = None) -> Mapping[str, str]: ...


@dataclass(frozen=True)
class _StreamEnded:
    reason: str


class ClientRuntime:
    """Runs a user's client object against a federation until :meth:`stop` is called."""

    def __init__(
        self,
        client: object,
        reducer: AssignsClients,
        *,
        name: str,
        heartbeat_timeout_s: float = 10.0,
        backoff_max_s: float = 5.0,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        tls: TLSFiles | None = None,
        token: str | None = None,
        max_model_bytes: int = 4 << 30,
        rng: random.Random | None = None,
        wait: Callable[[float], object] | None = None,
        codecs: Sequence[str] | None = None,
    ) -> None:
        """``codecs``: the compression codecs announced to combiners (default: every one fedn.compression
        has; empty: tasks come uncompressed)."""
        self.client = client
        self._tls = tls  # TLS to combiners when it names a CA (and mutual TLS with a certificate)
        self._token = token  # sent with every call; the combiner binds this client's id to it
        self.name = name
        self.client_id: str | None = None
        self.combiner_id: str | None = None
        self._reducer = reducer
        self._heartbeat_timeout_s = heartbeat_timeout_s
        self._silence_s = heartbeat_timeout_s  # how long a silence means the combiner is gone (see _heard)
        self._backoff_max_s = backoff_max_s
        self._chunk_bytes = chunk_bytes
        self._max_model_bytes = max_model_bytes
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._wait = wait or self._stop.wait  # tests inject one that does not sleep
        self._connected = False
        self._lock = threading.Lock()
        self._call: grpc.Future | None = None
        self._inbox: queue.Queue | None = None
        self._model_cache: tuple[tuple[str, str], list[TensorSpec], NamedArrays] | None = None
        self._codecs = [c for c in (CODECS if codecs is None else codecs) if c != "none"]
        self._np_rng = np.random.default_rng()  # int8's stochastic rounding
        # error feedback: what compression lost, per tensor, for the session and codec it was made in
        self._residual: dict[str, np.ndarray] = {}
        self._velocity: dict[str, np.ndarray] = {}  # top-k's momentum correction
        self._residual_for: tuple[str, str] = ("", "")
        self.rounds_trained = 0

    def stop(self) -> None:
        """Ask the runtime to finish; safe from a signal handler or another thread."""
        self._stop.set()
        with self._lock:
            if self._inbox is not None:
                self._inbox.put(_StreamEnded("stopping"))
            if self._call is not None:
                self._call.cancel()

    def run(self) -> None:
        """Connect, serve tasks, and reconnect after failures, until stopped."""
        attempt = 0  # failures in a row: no assignment, or a combiner left before it sent anything
        while not self._stop.is_set():
            try:
                assignment = self._reducer.assign_client(self.name, self.client_id)
            except FednError as exc:
                delay = self._backoff(attempt)
                attempt += 1
                logger.warning("no combiner assignment yet (%s); retrying in %.1fs", exc.message, delay)
                self._wait(delay)
                continue
            self.client_id = assignment["client_id"]
            self.combiner_id = assignment["combiner_id"]
            self._connected = False
            reason = self._serve(assignment["combiner_address"])
            attempt = 0 if self._connected else attempt
            if not self._stop.is_set():
                delay = self._backoff(attempt)
                attempt += 1
                logger.info("left combiner %s (%s); asking the reducer again in %.1fs", self.combiner_id, reason, delay)
                self._wait(delay)
        logger.info("client %s stopped", self.name)

    def _backoff(self, attempt: int) -> float:
        """Exponential back-off, capped, with full jitter: clients that lost the same combiner (or reducer)
        at once spread their retries instead of arriving together."""
        return self._rng.uniform(0, min(self._backoff_max_s, 0.5 * 2 ** min(attempt, 30)))

    # -- one connection ----------------------------------------------------

    def _serve(self, address: str) -> str:
        channel = open_channel(address, tls=self._tls, token=self._token, options=CHANNEL_OPTIONS)
        stub = pb_grpc.CombinerStub(channel)
        inbox: queue.Queue = queue.Queue()
        request = pb.TaskStreamRequest(client_id=self.client_id, client_name=self.name, codecs=self._codecs)
        call = stub.TaskStream(request)
        with self._lock:
            self._call, self._inbox = call, inbox
        if self._stop.is_set():
            call.cancel()
        reader = threading.Thread(target=self._read_stream, args=(call, inbox), name="task-stream", daemon=True)
        reader.start()
        connected = False
        self._silence_s = self._heartbeat_timeout_s  # until this combiner tells its heartbeat interval
        try:
            while not self._stop.is_set():
                try:
                    item = inbox.get(timeout=self._silence_s)
                except queue.Empty:
                    return f"no message for {self._silence_s:g}s"
                if isinstance(item, _StreamEnded):
                    return item.reason
                if not connected:
                    connected = self._connected = True
                    logger.info("client %s connected to combiner %s at %s", self.client_id, self.combiner_id, address)
                try:
                    task = self._heard(check_task(wire.task_from_proto(item)))
                except FednError as exc:
                    return self._malformed(exc)
                if task.kind == "train":
                    ended = self._run_train_task(stub, task, inbox)
                    if ended is not None:
                        return ended.reason
                elif task.kind == "evaluate":
                    self._run_evaluate_task(stub, task)
            return "stopping"
        finally:
            with self._lock:
                self._call, self._inbox = None, None
            call.cancel()
            channel.close()
            reader.join(timeout=5)

    def _malformed(self, exc: FednError) -> str:
        """A task no combiner of ours would send: leave the stream and ask the reducer again."""
        logger.error("combiner %s sent a task this client cannot take: %s", self.combiner_id, exc.message)
        return f"malformed task: {exc.message}"

    def _heard(self, task: wire.TaskInfo) -> wire.TaskInfo:
        """A heartbeat tells the combiner's interval (``timeout_s``): with many clients it sends them
        further apart, so the silence that means it is gone is the longer of ``heartbeat_timeout_s`` and
        :data:`SILENT_HEARTBEATS` intervals."""
        if task.kind == "heartbeat" and task.timeout_s > 0:
            announced = min(SILENT_HEARTBEATS * task.timeout_s, MAX_SILENCE_S)
            self._silence_s = max(self._heartbeat_timeout_s, announced)
        return task

    @staticmethod
    def _read_stream(call: Iterator, inbox: queue.Queue) -> None:
        try:
            for msg in call:
                inbox.put(msg)
            inbox.put(_StreamEnded("stream closed by the combiner"))
        except grpc.RpcError as exc:
            inbox.put(_StreamEnded(describe(exc)))

    # -- one task ----------------------------------------------------------

    def _run_train_task(
        self, stub: pb_grpc.CombinerStub, task: wire.TaskInfo, inbox: queue.Queue
    ) -> _StreamEnded | None:
        """Download, train, upload; returns the stream's end if it ended while waiting for an upload grant."""
        timeout_s = max(task.timeout_s, 1.0)
        deadline = time.monotonic() + timeout_s
        try:
            uplink = parse_compression(task.compression)
            downlink = parse_compression(task.downlink_compression)
            manifest, params = self._download(stub, task.model_id, timeout_s, downlink)
        except (grpc.RpcError, FednError) as exc:
            text = describe(exc)
            logger.error("round %s: could not download model %s: %s", task.round_id, task.model_id, text)
            self._report_failure(stub, task, f"could not download the global model: {text}")
            return None
        config = {**(task.config or {}), "round": task.round_index}
        try:
            result = self.client.train(params, config)
            arrays, weight, metrics = check_train_result(result, manifest)
        except Exception as exc:  # the user's code: report it, stay connected
            logger.exception("round %s: train failed", task.round_id)
            self._report_failure(stub, task, f"{type(exc).__name__}: {exc}")
            return None
        head = (task.round_id, self.client_id or "", task.model_id, weight, metrics)
        try:  # NaN, or a delta past float16's range: the codec refuses it (never clips it), the round fails
            if uplink.lossless:
                messages = wire.update_messages(*head, arrays, self._chunk_bytes)
            else:
                payload = self._encode_update(task, uplink, manifest, arrays)
                messages = wire.update_payload_messages(
                    *head, manifest, payload, compression=task.compression, chunk_bytes=self._chunk_bytes
                )
        except FednError as exc:
            logger.error("round %s: update not encoded in %s: %s", task.round_id, uplink.codec, describe(exc))
            self._report_failure(stub, task, f"update not encoded in {uplink.codec}: {describe(exc)}")
            return None
        header = next(messages)
        granted = self._await_grant(stub, task, header.header.model.payload_bytes, inbox, deadline)
        if isinstance(granted, _StreamEnded):
            return granted
        if granted:
            self._upload(stub, task, itertools.chain([header], messages), weight, timeout_s)
        return None

    def _encode_update(
        self, task: wire.TaskInfo, uplink: Compression, manifest: list[TensorSpec], arrays: NamedArrays
    ) -> bytes:
        """The update as the delta from the model this client received, in ``uplink``; with error feedback
        the residual of this session's previous rounds is added first, and what is lost now is kept."""
        assert self._model_cache is not None  # the model was downloaded for this task
        base = self._model_cache[2]
        residual = None
        if uplink.error_feedback:
            # per session and codec; a top-k warm-up changes the share kept from round to round, not the residual
            if self._residual_for != (task.session_id, uplink.codec):
                self._residual, self._velocity, self._residual_for = {}, {}, (task.session_id, uplink.codec)
            residual = self._residual
        return encode_update(
            arrays, base, manifest, uplink, rng=self._np_rng, residual=residual, velocity=self._velocity
        )

    def _run_evaluate_task(self, stub: pb_grpc.CombinerStub, task: wire.TaskInfo) -> None:
        """Download (or reuse) the model, evaluate it on this client's held-out data, report the figures."""
        timeout_s = max(task.timeout_s, 1.0)
        try:
            _manifest, params = self._download(stub, task.model_id, timeout_s)
        except (grpc.RpcError, FednError) as exc:
            text = describe(exc)
            logger.error("round %s: could not download model %s: %s", task.round_id, task.model_id, text)
            self._report_failure(stub, task, f"could not download the model to evaluate: {text}")
            return
        config = {**(task.config or {}), "round": task.round_index}
        try:
            loss, weight, metrics = check_evaluate_result(self.client.evaluate(params, config))
        except Exception as exc:  # the user's code: report it, stay connected
            logger.exception("round %s: evaluate failed", task.round_id)
            self._report_failure(stub, task, f"evaluate: {type(exc).__name__}: {exc}")
            return
        report = EvaluationReportInfo(task.round_id, self.client_id or "", task.model_id, loss, weight, metrics)
        try:
            reply = stub.ReportEvaluation(evaluation_report_to_proto(report), timeout=30)
        except grpc.RpcError as exc:
            log = logger.info if exc.code() == grpc.StatusCode.FAILED_PRECONDITION else logger.error
            log("round %s: evaluation not taken by the combiner: %s", task.round_id, describe(exc))
            return
        logger.info(
            "round %s: evaluated model %s: loss %.4g on %g examples (%d evaluations so far)",
            task.round_id,
            task.model_id,
            loss,
            weight,
            reply.accepted_evaluations,
        )

    def _await_grant(
        self, stub: pb_grpc.CombinerStub, task: wire.TaskInfo, size: int, inbox: queue.Queue, deadline: float
    ) -> bool | _StreamEnded:
        """Ask for an upload slot and wait for it on the task stream, so no upload stream sits waiting."""
        request = pb.UploadRequest(round_id=task.round_id, client_id=self.client_id or "", payload_bytes=size)
        try:
            reply = stub.RequestUpload(request, timeout=30)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:  # an older combiner: upload and wait in the stream
                return True
            log = logger.info if exc.code() == grpc.StatusCode.FAILED_PRECONDITION else logger.error
            log("round %s: no upload slot: %s", task.round_id, describe(exc))
            return False
        if reply.granted:
            return True
        logger.debug("round %s: waiting for an upload slot (%d ahead)", task.round_id, reply.queued_before)
        while not self._stop.is_set():
            if time.monotonic() >= deadline:  # checked first: no stream of other messages holds it past it
                logger.warning("round %s: no upload slot before the deadline", task.round_id)
                return False
            try:
                item = inbox.get(timeout=min(self._silence_s, max(0.1, deadline - time.monotonic())))
            except queue.Empty:
                if time.monotonic() >= deadline:
                    continue
                return _StreamEnded(f"no message for {self._silence_s:g}s")
            if isinstance(item, _StreamEnded):
                return item
            try:
                waiting = self._heard(wire.task_from_proto(item))
            except FednError as exc:
                return _StreamEnded(self._malformed(exc))
            if waiting.kind == "upload_grant" and waiting.round_id == task.round_id:
                return True
            if waiting.kind == "train":  # the round moved on without us; serve the new task next
                inbox.put(item)
                return False
        return False

    def _download(
        self, stub: pb_grpc.CombinerStub, model_id: str, timeout_s: float, codec: Compression | None = None
    ) -> tuple[list, NamedArrays]:
        """The model (as ``codec`` decodes it, if given), downloaded once and kept; a copy for the user's code."""
        codec = codec or Compression()
        key = (model_id, codec.text())
        if self._model_cache is None or self._model_cache[0] != key:
            manifest, arrays = download_model(
                stub,
                model_id,
                self.client_id or "",
                timeout_s=timeout_s,
                max_model_bytes=self._max_model_bytes,
                codec=codec,
            )
            self._model_cache = (key, manifest, arrays)
        _, manifest, arrays = self._model_cache
        return manifest, {name: a.copy() for name, a in arrays.items()}

    def _upload(self, stub, task: wire.TaskInfo, messages: Iterator, weight: float, timeout_s: float) -> None:
        try:
            reply = stub.UploadUpdate(messages, timeout=timeout_s + 30)
        except grpc.RpcError as exc:
            # FAILED_PRECONDITION: the round or async session moved on (closed, ended, too stale), not a fault here
            log = logger.info if exc.code() == grpc.StatusCode.FAILED_PRECONDITION else logger.error
            log("round %s: update not taken by the combiner: %s", task.round_id, describe(exc))
            return
        self.rounds_trained += 1
        logger.info(
            "round %s: update accepted (%g examples, %d updates so far)", task.round_id, weight, reply.accepted_updates
        )

    def _report_failure(self, stub, task: wire.TaskInfo, error: str) -> None:
        try:
            stub.ReportFailure(
                pb.ReportFailureRequest(round_id=task.round_id, client_id=self.client_id or "", error=error),
                timeout=30,
            )
        except grpc.RpcError as exc:
            logger.warning("round %s: could not report the failure: %s", task.round_id, describe(exc))
