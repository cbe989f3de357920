"""A combiner's resident memory under malformed gRPC input: does refused garbage leave memory behind?

One combiner runs as a process of its own (a local model store in a temporary directory holding a
small seed model, no reducer: it keeps serving while the reducer is away). A few threads send it
``--calls`` malformed calls spread over every method: random bytes as request bodies (raw channel
methods, no serializer), ids with NUL, control characters or over 255 bytes, task streams opened
with random ids and dropped, upload streams with garbage headers or garbage chunks, round plans
that are empty or invalid. Prints one JSON line: the status codes received, and the combiner's
RSS idle, at its peak and 5 s after the last call. INTERNAL, UNKNOWN and UNAVAILABLE are bugs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import string
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np

from fedn.launcher import ManagedProcess, free_port
from fedn.models import save_model
from fedn.sim.memory import peak_rss_mb, rss_mb
from fedn.store import open_model_store
from fedn.v1 import fedn_pb2 as pb
from fedn.v1 import fedn_pb2_grpc as pb_grpc

__all__ = ["BAD_CODES", "run"]

SERVICE = "/fedn.v1.Combiner/"
BAD_CODES = ("INTERNAL", "UNKNOWN", "UNAVAILABLE")
CALL_TIMEOUT_S = 10.0


def _bad_id(rng: random.Random) -> str:
    kind = rng.randrange(7)
    if kind == 0:
        return "model\x00" + _word(rng)
    if kind == 1:
        return "m" * 300
    if kind == 2:
        return _word(rng) + rng.choice("\n\r\t\x1b\x7f\x01") + _word(rng)
    if kind == 3:
        return ""
    if kind == 4:
        return "é" * rng.randint(128, 400)  # under 255 characters, over 255 bytes
    if kind == 5:
        return "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randint(1, 300)))
    return _word(rng)  # well formed, but nothing of that name exists


def _word(rng: random.Random) -> str:
    return "".join(rng.choices(string.ascii_letters + string.digits + "-_", k=rng.randint(1, 40)))


def _garbage(rng: random.Random, max_len: int = 2048) -> bytes:
    return rng.randbytes(rng.randint(0, max_len))


class _Fuzzer:
    """The calls of one thread, on a channel of its own; ``counts`` is shared (Counter updates under a lock)."""

    def __init__(self, address: str, seed_model_id: str, rng: random.Random, counts: Counter, lock: threading.Lock):
        self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.CombinerStub(self.channel)
        self.seed_model_id = seed_model_id
        self.rng = rng
        self.counts = counts
        self.lock = lock
        self.cases: list[Callable[[], str]] = [
            self.raw_unary,
            self.raw_download,
            self.raw_task_stream,
            self.raw_upload,
            self.task_stream_drop,
            self.download,
            self.upload_garbage_header,
            self.upload_garbage_chunks,
            self.request_upload,
            self.report_failure,
            self.run_round,
            self.announce,
            self.big_body,
        ]

    def close(self) -> None:
        self.channel.close()

    def one(self) -> None:
        code = self.rng.choice(self.cases)()
        with self.lock:
            self.counts[code] += 1

    # -- helpers -----------------------------------------------------------

    @staticmethod
    def _code(call: Callable[[], object]) -> str:
        try:
            reply = call()
            if hasattr(reply, "__next__"):
                for _ in reply:
                    pass
        except grpc.RpcError as exc:
            return exc.code().name
        return "OK"

    def _raw(self, kind: str, method: str):
        make = getattr(self.channel, kind)
        return make(SERVICE + method, request_serializer=None, response_deserializer=None)

    # -- the cases ---------------------------------------------------------

    def raw_unary(self) -> str:
        method = self.rng.choice(["RunRound", "RequestUpload", "ReportFailure", "AnnounceModel"])
        payload = _garbage(self.rng)
        return self._code(lambda: self._raw("unary_unary", method)(payload, timeout=CALL_TIMEOUT_S))

    def big_body(self) -> str:
        """Rarely, a body of megabytes: under the 4 MiB message cap, or over it."""
        if self.rng.random() > 0.1:
            return self.raw_unary()
        method = self.rng.choice(["RunRound", "RequestUpload", "ReportFailure", "AnnounceModel", "UploadUpdate"])
        payload = self.rng.randbytes(self.rng.choice([1 << 20, 3 << 20, 5 << 20]))
        if method == "UploadUpdate":
            return self._code(lambda: self._raw("stream_unary", method)(iter([payload]), timeout=CALL_TIMEOUT_S))
        return self._code(lambda: self._raw("unary_unary", method)(payload, timeout=CALL_TIMEOUT_S))

    def raw_download(self) -> str:
        payload = _garbage(self.rng)
        return self._code(lambda: self._raw("unary_stream", "DownloadModel")(payload, timeout=CALL_TIMEOUT_S))

    def raw_task_stream(self) -> str:
        call = self._raw("unary_stream", "TaskStream")(_garbage(self.rng), timeout=CALL_TIMEOUT_S)
        return self._first_then_drop(call)

    def raw_upload(self) -> str:
        messages = [_garbage(self.rng) for _ in range(self.rng.randint(0, 4))]
        return self._code(lambda: self._raw("stream_unary", "UploadUpdate")(iter(messages), timeout=CALL_TIMEOUT_S))

    def _first_then_drop(self, call) -> str:
        """Read the first message of a stream (a connected client's heartbeat), then hang up."""
        try:
            next(call)
        except StopIteration:
            return "OK"
        except grpc.RpcError as exc:
            return exc.code().name
        finally:
            call.cancel()
        return "OK"

    def task_stream_drop(self) -> str:
        rng = self.rng
        client_id = _word(rng) if rng.random() < 0.5 else _bad_id(rng)
        name = _bad_id(rng) if rng.random() < 0.3 else client_id
        request = pb.TaskStreamRequest(client_id=client_id, client_name=name)
        return self._first_then_drop(self.stub.TaskStream(request, timeout=CALL_TIMEOUT_S))

    def download(self) -> str:
        rng = self.rng
        model_id = self.seed_model_id if rng.random() < 0.2 else _bad_id(rng)
        client_id = _bad_id(rng) if rng.random() < 0.5 else ""
        request = pb.DownloadModelRequest(model_id=model_id, client_id=client_id)
        return self._code(lambda: self.stub.DownloadModel(request, timeout=CALL_TIMEOUT_S))

    def _header(self) -> pb.UpdateHeader:
        rng = self.rng
        ids = [_bad_id(rng) for _ in range(4)]
        header = pb.UpdateHeader(
            round_id=ids[0],
            client_id=ids[1],
            base_model_id=rng.choice([ids[2], self.seed_model_id]),
            num_examples=rng.choice([float("nan"), float("inf"), -1.0, 0.0, 1e300, 10.0]),
            model=pb.ModelHeader(
                model_id=ids[3],
                sha256=rng.choice(["", "zz", "0" * 64, _word(rng)]),
                payload_bytes=rng.choice([-1, 0, 1 << 62, rng.randint(1, 1 << 20)]),
            ),
        )
        for _ in range(rng.randint(0, 3)):
            header.metrics[_bad_id(rng)] = rng.choice([float("nan"), 1.0, -float("inf")])
        for _ in range(rng.randint(0, 3)):
            t = header.model.tensors.add()
            t.name = _bad_id(rng)
        return header

    def upload_garbage_header(self) -> str:
        rng = self.rng
        messages = [pb.UpdateChunk(header=self._header())]
        messages += [pb.UpdateChunk(data=_garbage(rng, 4096)) for _ in range(rng.randint(0, 3))]
        if rng.random() < 0.2:
            messages.append(pb.UpdateChunk(header=self._header()))  # a second header
        return self._code(lambda: self.stub.UploadUpdate(iter(messages), timeout=CALL_TIMEOUT_S))

    def upload_garbage_chunks(self) -> str:
        rng = self.rng
        messages = [pb.UpdateChunk(data=_garbage(rng, 4096)) for _ in range(rng.randint(0, 3))]
        return self._code(lambda: self.stub.UploadUpdate(iter(messages), timeout=CALL_TIMEOUT_S))

    def request_upload(self) -> str:
        rng = self.rng
        request = pb.UploadRequest(
            round_id=_bad_id(rng), client_id=_bad_id(rng), payload_bytes=rng.choice([-1, 0, 1 << 62, 100])
        )
        return self._code(lambda: self.stub.RequestUpload(request, timeout=CALL_TIMEOUT_S))

    def report_failure(self) -> str:
        rng = self.rng
        error = rng.choice(["", "x" * rng.randint(1, 100_000), _bad_id(rng)])
        request = pb.ReportFailureRequest(round_id=_bad_id(rng), client_id=_bad_id(rng), error=error)
        return self._code(lambda: self.stub.ReportFailure(request, timeout=CALL_TIMEOUT_S))

    def run_round(self) -> str:
        rng = self.rng
        kind = rng.randrange(4)
        if kind == 0:
            plan = pb.RoundPlan()  # empty
        elif kind == 1:
            plan = pb.RoundPlan(round_id=_bad_id(rng), session_id=_bad_id(rng), model_id=_bad_id(rng))
        elif kind == 2:  # well-formed ids, invalid numbers or names
            plan = pb.RoundPlan(
                round_id=_word(rng),
                session_id=_word(rng),
                round_index=rng.choice([-1, 1 << 62]),
                model_id=self.seed_model_id,
                timeout_s=rng.choice([float("nan"), float("inf"), -1.0, 0.0]),
                mode=rng.choice(["", "turbo", "\x00"]),
                aggregator=rng.choice(["", "nope", "m" * 300]),
                max_clients=rng.choice([-1, 0]),
            )
        else:  # config values with no kind, or NaN
            plan = pb.RoundPlan(round_id=_word(rng), session_id=_word(rng), model_id=self.seed_model_id, timeout_s=-1)
            for _ in range(rng.randint(1, 3)):
                value = plan.config[_bad_id(rng)]
                if rng.random() < 0.5:
                    value.SetInParent()
                else:
                    value.double_value = float("nan")
        return self._code(lambda: self.stub.RunRound(plan, timeout=CALL_TIMEOUT_S))

    def announce(self) -> str:
        rng = self.rng
        request = pb.ModelAnnouncement(
            session_id=_bad_id(rng),
            model_id=_bad_id(rng),
            model_version=rng.choice([-1, 0, 1 << 62]),
            final=rng.random() < 0.5,
        )
        return self._code(lambda: self.stub.AnnounceModel(request, timeout=CALL_TIMEOUT_S))


def _start_combiner(workdir: Path, models_url: str, log_level: str) -> tuple[ManagedProcess, str]:
    port = free_port()
    address = f"127.0.0.1:{port}"
    nobody = f"http://127.0.0.1:{free_port()}"  # no reducer: the combiner keeps serving and retrying it
    argv = [sys.executable, "-m", "fedn", "--log-level", log_level, "combiner", "start", "--name", "fuzz"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--reducer", nobody]
    proc = ManagedProcess("combiner", argv, workdir / "combiner.log")
    proc.start({**os.environ, "PYTHONUNBUFFERED": "1", "FEDN_COMBINER_MODELS": models_url})
    channel = grpc.insecure_channel(address)
    try:
        deadline = time.monotonic() + 60
        while True:
            if not proc.is_running():
                raise RuntimeError(f"the combiner exited at start; its log:\n{proc.log_tail()}")
            try:
                grpc.channel_ready_future(channel).result(timeout=0.5)
                break
            except grpc.FutureTimeoutError:
                if time.monotonic() > deadline:
                    proc.stop()
                    raise RuntimeError(
                        f"the combiner did not listen within 60 s; its log:\n{proc.log_tail()}"
                    ) from None
    finally:
        channel.close()
    return proc, address


def run(
    calls: int = 10_000,
    threads: int = 4,
    seed: int = 0,
    settle_s: float = 5.0,
    params: int = 10_000,
    log_level: str = "INFO",
) -> dict:
    with tempfile.TemporaryDirectory(prefix="fedn-fuzz-rss-") as tmp:
        workdir = Path(tmp)
        models_url = (workdir / "models").as_uri()
        store = open_model_store(models_url)
        seed_model = save_model(store, {"w": np.zeros(params, dtype=np.float32)})
        store.close()
        proc, address = _start_combiner(workdir, models_url, log_level)
        try:
            time.sleep(1.0)
            idle = rss_mb(proc.pid)
            peak = idle
            counts: Counter = Counter()
            lock = threading.Lock()
            remaining = [calls]

            def take() -> bool:
                with lock:
                    if remaining[0] <= 0:
                        return False
                    remaining[0] -= 1
                    return True

            def worker(index: int) -> None:
                fuzzer = _Fuzzer(address, seed_model.id, random.Random(seed * 1000 + index), counts, lock)
                try:
                    while take():
                        fuzzer.one()
                finally:
                    fuzzer.close()

            workers = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
            started = time.monotonic()
            for w in workers:
                w.start()
            while any(w.is_alive() for w in workers):
                peak = max(peak, rss_mb(proc.pid))
                time.sleep(0.05)
            elapsed = time.monotonic() - started
            time.sleep(settle_s)
            after = rss_mb(proc.pid)
            peak = max(peak, after, peak_rss_mb(proc.pid))
            alive = proc.is_running()
        finally:
            proc.stop()
        log_bytes = (workdir / "combiner.log").stat().st_size if (workdir / "combiner.log").exists() else 0
    return {
        "bench": "combiner_fuzz_rss",
        "calls": sum(counts.values()),
        "threads": threads,
        "seconds": round(elapsed, 2),
        "codes": dict(sorted(counts.items())),
        "bad_codes": sum(counts[c] for c in BAD_CODES),
        "combiner_alive": alive,
        "log_bytes": log_bytes,
        "rss_mb_idle": round(idle, 1),
        "rss_mb_peak": round(peak, 1),
        "rss_mb_after": round(after, 1),
        "growth_mb": round(after - idle, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--settle-s", type=float, default=5.0, help="wait after the last call before measuring")
    parser.add_argument("--log-level", default="INFO", help="the combiner's (INFO, as deployed, logs each refusal)")
    args = parser.parse_args(argv)
    row = run(args.calls, args.threads, args.seed, args.settle_s, log_level=args.log_level)
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
