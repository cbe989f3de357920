"""What keeps a combiner's memory flat: tasks paced by downloads, large updates spooled to disk,
download messages serialized once, and heartbeats from one loop."""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

import combiner.staging as staging_module
from combiner.server import CombinerServer
from combiner.settings import CombinerSettings
from fedn.aggregation import WeightedMean
from fedn.chunking import ChunkSpool
from fedn.clock import ManualClock
from fedn.codec import decode_model
from fedn.errors import FednError
from fedn.launcher import ManagedProcess
from fedn.v1 import fedn_pb2 as pb
from tests.integration.test_combiner_grpc import (
    FakeClient,
    _bad,
    _plan,
    _round_with,
    _shifted,
    _start_round,
    _wait_connected,
)


def _with_train_task(clients: list[FakeClient]) -> set[str]:
    return {c.client_id for c in clients if any(t.kind == "train" for t in c.tasks)}


def _wait_for(predicate, what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _paced_round(start_combiner, model_store, model_id: str, clients: int, clock: ManualClock | None = None):
    """A round on a combiner with one download stream, so two train tasks are out at a time; grants
    lapse after 5 s on ``clock``."""
    server, stub = start_combiner(model_store, clock, max_concurrent_downloads=1, upload_grant_timeout_s=5.0)
    fakes = [FakeClient(stub, f"c{i}") for i in range(clients)]
    _wait_connected(server, clients)
    thread, holder = _start_round(stub, _plan(model_id))
    _wait_for(lambda: len(_with_train_task(fakes)) == 2, "the first two tasks")
    return fakes, thread, holder


def test_train_tasks_go_out_as_downloads_complete_or_grants_lapse(
    start_combiner, model_store, global_model, loop_thread
):
    model_id, _ = global_model
    clock = ManualClock()
    clients, thread, holder = _paced_round(start_combiner, model_store, model_id, 4, clock)
    first = _with_train_task(clients)
    assert len(first) == 2, first  # the other two wait for a download to finish
    by_id = {c.client_id: c for c in clients}
    downloader, idler = (by_id[c] for c in sorted(first))
    downloader.download(model_id)
    _wait_for(lambda: len(_with_train_task(clients)) == 3, "a task for the next client once a download is done")
    assert idler.client_id in _with_train_task(clients)
    # the idler never downloads: once its grant lapses the last client gets its task anyway
    loop_thread.advance(clock, 4.0)
    assert len(_with_train_task(clients)) == 3
    loop_thread.advance(clock, 1.5)
    _wait_for(lambda: len(_with_train_task(clients)) == 4, "a task after an unused grant lapsed")
    for i, client in enumerate(clients):
        task = client.wait_task()
        client.upload(task.round_id, _shifted(client.download(model_id), float(i)))
    thread.join(30)
    assert holder["result"].num_updates == 4
    for client in clients:
        client.close()


def test_a_client_that_leaves_while_queued_for_its_task_does_not_hold_up_the_round(
    start_combiner, model_store, global_model
):
    model_id, _ = global_model
    clients, thread, holder = _paced_round(start_combiner, model_store, model_id, 3)
    queued = next(c for c in clients if c.client_id not in _with_train_task(clients))
    queued.close()  # gone before its turn: counted as failed, and its place is given up
    for client in clients:
        if client is not queued:
            task = client.wait_task()
            client.upload(task.round_id, _shifted(client.download(model_id), 1.0))
    thread.join(30)
    result = holder["result"]
    assert result.num_updates == 2
    assert {f.client_id: f.error for f in result.failures} == {queued.client_id: "client disconnected"}
    for client in clients:
        if client is not queued:
            client.close()


@pytest.fixture
def spools(monkeypatch) -> list[ChunkSpool]:
    """Every ChunkSpool the combiner opens, to check it was used and closed."""
    made: list[ChunkSpool] = []

    class Recorded(ChunkSpool):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(staging_module, "ChunkSpool", Recorded)
    return made


def test_an_update_over_the_spool_limit_is_staged_on_disk_and_folds_the_same(
    start_combiner, model_store, global_model, tmp_path, spools
):
    model_id, arrays = global_model
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    server, stub = start_combiner(model_store, spool_over_bytes=0, spool_dir=str(spool_dir))
    (good, other, bad), thread, holder = _round_with(server, stub, ["good", "other", "bad"], _plan(model_id))
    round_id = good.wait_task().round_id
    updates = {"good": (_shifted(arrays, 1.0), 10.0), "other": (_shifted(arrays, 3.0), 30.0)}
    good.upload(round_id, *updates["good"])
    other.upload(round_id, *updates["other"])
    poisoned = {k: v.copy() for k, v in arrays.items()}
    poisoned["fc.bias"][-1] = np.nan  # the last value of the last float tensor read back
    with pytest.raises(grpc.RpcError) as info:
        bad.upload(round_id, poisoned)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "NaN" in info.value.details()
    thread.join(30)
    result = holder["result"]
    assert (result.num_updates, result.num_rejected) == (2, 1)
    partial = decode_model(model_store.get(result.partial_key))
    for name in arrays:
        expected = sum(u[name].astype(np.float64) * w for u, w in updates.values()) / 40.0
        np.testing.assert_allclose(partial[name], expected, rtol=1e-12)
    assert len(spools) == 3 and all(s._file.closed for s in spools)  # each upload spooled, each file closed
    for client in (good, other, bad):
        client.close()


@pytest.mark.parametrize("case", ["nan", "inf", "sha256 mismatch", "short stream", "wrong shape"])
def test_a_bad_spooled_upload_is_refused_and_its_file_closed(case, start_combiner, model_store, global_model, spools):
    model_id, arrays = global_model
    server, stub = start_combiner(model_store, spool_over_bytes=0)
    (good, bad), thread, holder = _round_with(server, stub, ["good", "bad"], _plan(model_id))
    round_id = good.wait_task().round_id
    good.upload(round_id, _shifted(arrays, 1.0))
    update, kwargs, code, words = _bad(arrays)[case]
    with pytest.raises(grpc.RpcError) as info:
        bad.upload(round_id, update, **kwargs)
    assert info.value.code() == code and words.lower() in info.value.details().lower()
    thread.join(30)
    result = holder["result"]
    assert (result.num_updates, result.num_rejected) == (1, 1)
    partial = decode_model(model_store.get(result.partial_key))
    np.testing.assert_array_equal(partial["fc.weight"], (arrays["fc.weight"] + 1.0).astype(np.float64))
    assert all(s._file.closed for s in spools) and len(spools) == (1 if case == "wrong shape" else 2)
    good.close()
    bad.close()


def test_a_download_given_up_midway_leaves_the_combiner_serving(start_combiner, model_store, global_model):
    model_id, arrays = global_model
    _, stub = start_combiner(model_store, model_cache_bytes=0, chunk_bytes=1024)  # streamed from the store
    call = stub.DownloadModel(pb.DownloadModelRequest(model_id=model_id, client_id="quitter"))
    assert next(call).WhichOneof("part") == "header" and next(call).WhichOneof("part") == "data"
    call.cancel()
    client = FakeClient(stub, "c0")
    params = client.download(model_id)
    for name, value in arrays.items():
        np.testing.assert_array_equal(params[name], value)
    client.close()


def test_a_held_model_is_serialized_once_and_every_download_sends_those_bytes(
    loop_thread, combiner, stub, global_model
):
    model_id, arrays = global_model

    async def messages() -> list[bytes]:
        models = combiner.rounds.context.models
        model = await models.get(model_id)
        return [m async for m in models.download_messages(model)]

    first, second = loop_thread.run(messages()), loop_thread.run(messages())
    assert len(first) > 2 and all(a is b for a, b in zip(first, second, strict=True))  # shared, not copied
    client = FakeClient(stub, "c0")
    params = client.download(model_id)  # what a client decodes from them: the model, digest checked
    for name, value in arrays.items():
        np.testing.assert_array_equal(params[name], value)
    client.close()


def test_an_idle_stream_gets_heartbeats(combiner, stub):
    """Over gRPC; their pace (one per interval, only to idle streams) is checked on a ManualClock in
    tests/unit/test_combiner_runs.py."""
    client = FakeClient(stub, "idle")
    _wait_for(lambda: sum(t.kind == "heartbeat" for t in client.tasks) >= 3, "the connect heartbeat and two more")
    client.close()


def test_a_combiner_with_an_unusable_spool_dir_refuses_to_start(loop_thread, model_store, tmp_path):
    missing = tmp_path / "no-such-dir"
    server = CombinerServer(CombinerSettings(port=0, spool_dir=str(missing)), model_store, reducer=None)
    try:
        with pytest.raises(FednError, match="--spool-dir") as info:
            loop_thread.run(server.start(), timeout_s=30)
        assert str(missing) in info.value.message
    finally:
        loop_thread.run(server.stop(0.1), timeout_s=30)


_ARENA_HEAP_BYTES = 64 << 20  # glibc's HEAP_MAX_SIZE on 64-bit: each thread arena is one such mapping


def _thread_arenas(pid: int) -> int:
    """glibc thread arenas in a process's map: 64 MiB-aligned anonymous mappings of exactly 64 MiB,
    the used part read-write and the rest reserved (---p)."""
    regions = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        regions.append((lo, hi, fields[1], len(fields) > 5))
    count = 0
    for i, (lo, hi, perms, named) in enumerate(regions):
        if lo % _ARENA_HEAP_BYTES or named or not perms.startswith("rw"):
            continue
        if hi - lo == _ARENA_HEAP_BYTES:
            count += 1
        elif i + 1 < len(regions):
            lo2, hi2, perms2, named2 = regions[i + 1]
            count += lo2 == hi and perms2 == "---p" and not named2 and hi2 - lo == _ARENA_HEAP_BYTES
    return count


def _serving_combiner_arenas(tmp_path: Path, arenas: str | None) -> int:
    """Start `fedn combiner start` (its reducer absent: it serves anyway) and count its arenas."""
    env = {k: v for k, v in os.environ.items() if k not in {"MALLOC_ARENA_MAX", "FEDN_COMBINER_MALLOC_ARENAS"}}
    if arenas is not None:
        env["FEDN_COMBINER_MALLOC_ARENAS"] = arenas
    argv = [sys.executable, "-m", "fedn", "combiner", "start", "--port", "0", "--reducer", "http://127.0.0.1:9"]
    argv += ["--models", (tmp_path / "models").as_uri()]
    proc = ManagedProcess(f"combiner-{arenas}", argv, tmp_path / f"combiner-{arenas}.log")
    proc.start(env)
    try:
        _wait_for(lambda: "listening on" in proc.log_tail(), "the combiner to listen", timeout_s=60)
        _wait_for(lambda: "reducer unreachable" in proc.log_tail(), "its first call to the reducer", timeout_s=60)
        return _thread_arenas(proc.pid)
    finally:
        proc.stop()


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="heap arenas are glibc's")
def test_a_combiner_process_keeps_its_threads_in_one_heap_arena(tmp_path):
    # gRPC's threads receive chunks and worker threads fold them: in per-thread arenas, memory
    # freed by one could not serve the other, and the peak would be every arena's at once.
    # The default: the combiner's threads share the main heap. A thread started before the CLI runs
    # (numpy's BLAS thread, started at import) may have made one arena of its own first.
    assert _serving_combiner_arenas(tmp_path, None) <= 1
    assert _serving_combiner_arenas(tmp_path, "0") > 2  # glibc's own default: an arena per thread


class _LaxMean(WeightedMean):
    """A plug-in that checks nothing and wants numpy arrays: the combiner must do both for it."""

    reads_spooled = False

    def validate(self, arrays, weight) -> None:
        pass

    def add(self, arrays, weight, **kwargs) -> None:
        assert all(isinstance(a, np.ndarray) for a in arrays.values()), "got tensors still on disk"
        super().add(arrays, weight, **kwargs)


def test_a_plugin_aggregator_gets_checked_numpy_arrays(monkeypatch, start_combiner, model_store, global_model, spools):
    import fedn.aggregation as aggregation

    monkeypatch.setattr(aggregation, "_aggregators", lambda: {**aggregation.AGGREGATORS, "lax": _LaxMean})
    model_id, arrays = global_model
    server, stub = start_combiner(model_store, spool_over_bytes=0)  # every update over the spool limit
    plan = _plan(model_id).model_copy(update={"aggregator": "lax"})
    (good, bad), thread, holder = _round_with(server, stub, ["good", "bad"], plan)
    good.upload("r1", _shifted(arrays, 1.0))
    update, kwargs, code, words = _bad(arrays)["nan"]
    with pytest.raises(grpc.RpcError) as info:
        bad.upload("r1", update, **kwargs)
    assert info.value.code() == code and words in info.value.details()
    thread.join(30)
    assert (holder["result"].num_updates, holder["result"].num_rejected) == (1, 1)
    assert spools == []  # staged in memory: this aggregator does not read spooled tensors
    good.close()
    bad.close()
