"""Compressed updates and models at the combiner: which codec a client is told, and which it may use.

The reducer's plan names the session's update (uplink) and model (downlink) codecs. A client gets each
only if it announced that codec when it opened its task stream; otherwise that direction stays raw.
An update arrives either raw or in exactly the plan's uplink codec (fedn.compression); it is decoded
against the model the client received (the downlink-decoded one when the model was compressed).
"""

from __future__ import annotations

import logging
from collections.abc import Set
from dataclasses import replace

from fedn.compression import Compression, parse_compression
from fedn.errors import InvalidArgument
from fedn.ids import printable
from fedn.records import RoundPlan
from fedn.wire import TaskInfo

__all__ = ["RAW", "is_raw", "negotiate", "update_compression"]

logger = logging.getLogger(__name__)

RAW = "none"


def is_raw(text: str) -> bool:
    """Whether a codec text on the wire means raw tensors ("" from a peer that did not say)."""
    return text in ("", RAW)


def _offered(text: str, codecs: Set[str]) -> str:
    return text if not is_raw(text) and parse_compression(text).codec in codecs else RAW


def negotiate(task: TaskInfo, codecs: Set[str]) -> TaskInfo:
    """``task`` as one client gets it: each codec kept only if the client announced it."""
    if task.kind != "train" or (is_raw(task.compression) and is_raw(task.downlink_compression)):
        return task
    return replace(
        task,
        compression=_offered(task.compression, codecs),
        downlink_compression=_offered(task.downlink_compression, codecs),
    )


def update_compression(header_text: str, plan: RoundPlan) -> Compression | None:
    """The codec of an update whose header says ``header_text``: None for raw, the plan's codec if it
    names exactly that one; InvalidArgument for any other."""
    if is_raw(header_text):
        return None
    if not is_raw(plan.compression) and header_text == plan.compression:
        return parse_compression(plan.compression)
    offered = f"{plan.compression!r} or uncompressed" if not is_raw(plan.compression) else "only uncompressed updates"
    raise InvalidArgument(
        f"update compressed with {printable(header_text[:80])!r}, but round {plan.round_id} takes {offered}"
    )
