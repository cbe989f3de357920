"""How the load test counts its emulated clients' failed calls: a stream a combiner ended to rebalance
is what real clients answer by asking the reducer again, every other ending is an error."""

from __future__ import annotations

from fedn.loadtest import LoadResult, is_client_error
from fedn.wire import SHED_MESSAGE


def _result(endings: dict[str, int], assign_failures: dict[str, int] | None = None) -> LoadResult:
    return LoadResult(
        tls=True,
        clients=10,
        combiners=2,
        params=100,
        round_s=[1.0, 2.0],
        combiner_rss_idle_mb=[1.0, 1.0],
        combiner_rss_connected_mb=[2.0, 2.0],
        combiner_rss_peak_mb=[3.0, 3.0],
        reducer_rss_peak_mb=4.0,
        cpu_s={"combiners": 1.0},
        stream_endings=endings,
        assign_failures=assign_failures or {},
    )


def test_only_a_rebalanced_task_stream_is_not_an_error():
    assert not is_client_error(f"TaskStream UNAVAILABLE: {SHED_MESSAGE}")
    assert is_client_error("TaskStream CANCELLED: CANCELLED")
    assert is_client_error("TaskStream UNAVAILABLE: Socket closed")  # a combiner gone is a failure
    assert is_client_error(f"UploadUpdate UNAVAILABLE: {SHED_MESSAGE}")  # only the task stream is shed
    assert is_client_error("TaskStream closed by the combiner")


def test_a_row_counts_errors_and_rebalances_apart():
    row = _result(
        {f"TaskStream UNAVAILABLE: {SHED_MESSAGE}": 7, "DownloadModel DEADLINE_EXCEEDED: slow": 2},
        {"Unavailable: no live combiner": 1},
    ).row()
    assert row["rebalanced_streams"] == 7 and row["client_errors"] == 3
    assert row["client_error_kinds"] == {"DownloadModel DEADLINE_EXCEEDED: slow": 2, "Unavailable: no live combiner": 1}
    clean = _result({f"TaskStream UNAVAILABLE: {SHED_MESSAGE}": 3}).row()
    assert (clean["client_errors"], clean["client_error_kinds"], clean["rebalanced_streams"]) == (0, {}, 3)


def test_a_task_the_emulated_client_refuses_is_counted_not_lost():
    # a combiner that sends a task no combiner of ours would (here a NaN interval) ends that stream as
    # a client error; the emulated client does not die silently
    import asyncio

    from fedn.loadtest import _emulated_client
    from fedn.v1 import fedn_pb2 as pb

    class Call:
        def __aiter__(self):
            async def tasks():
                yield pb.Task(kind=pb.TASK_KIND_HEARTBEAT, timeout_s=float("nan"))

            return tasks()

        def cancel(self) -> None:
            pass

    class Stub:
        def TaskStream(self, request, metadata=None):
            return Call()

    what, how = asyncio.run(_emulated_client(Stub(), "c1"))
    assert what == "TaskStream" and how.startswith("refused: task timeout_s must be")
    assert is_client_error(f"{what} {how}")
