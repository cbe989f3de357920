"""What a client checks of its combiner beyond :mod:`fedn.wire`'s bounds, and how it tells a combiner's error.

A broken or compromised combiner must not make the client download, report or upload under ids no combiner
of ours sends, hand user code a negative round, or write multi-line or unbounded text into the client's log.
"""

from __future__ import annotations

import grpc

from fedn import wire
from fedn.errors import FednError
from fedn.ids import check_id
from fedn.store.validation import clip
from fedn.wire_limits import check_count

__all__ = ["MAX_REASON_CHARS", "check_task", "describe"]

MAX_REASON_CHARS = 300


def check_task(task: wire.TaskInfo) -> wire.TaskInfo:
    """A train or evaluate task with its ids in form (as the reducer's plans have them) and its round index
    not negative; InvalidArgument otherwise. Other kinds name nothing the client acts on unchecked."""
    if task.kind in ("train", "evaluate"):
        check_id(task.round_id, "round_id")
        check_id(task.model_id, "model_id")
        check_id(task.session_id, "session_id", optional=True)
        check_count(task.round_index, "round_index")
    return task


def describe(exc: BaseException) -> str:
    """A gRPC error as ``CODE: details``, a FednError as its message: one printable line of at most
    :data:`MAX_REASON_CHARS`, since the details are whatever the combiner chose to send."""
    if isinstance(exc, grpc.RpcError) and isinstance(exc, grpc.Call):
        text = f"{exc.code().name}: {exc.details()}"
    else:
        text = exc.message if isinstance(exc, FednError) else f"{type(exc).__name__}: {exc}"
    return clip(text, MAX_REASON_CHARS)
