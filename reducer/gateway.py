"""How the reducer talks to combiners: ``RunRound`` for its part of a round, ``AnnounceModel`` for async sessions."""

from __future__ import annotations

import threading
from typing import Protocol

import grpc

from fedn.auth.rpc import TokenSource, open_channel
from fedn.errors import Unavailable, error_from_grpc
from fedn.records import CombinerRecord, RoundPlan, RoundResult
from fedn.tls import TLSFiles
from fedn.v1 import fedn_pb2 as pb
from fedn.v1 import fedn_pb2_grpc as pb_grpc
from fedn.wire import Announcement, announcement_to_proto, round_plan_to_proto, round_result_from_proto
from reducer.registry import CombinerRegistry

__all__ = ["CombinerGateway", "GrpcCombinerGateway", "WatchedGateway"]


class CombinerGateway(Protocol):
    def run_round(self, combiner: CombinerRecord, plan: RoundPlan, timeout_s: float) -> RoundResult: ...

    def announce(self, combiner: CombinerRecord, info: Announcement, timeout_s: float) -> bool: ...

    def abandon(self, combiner: CombinerRecord, session_id: str, reason: str, timeout_s: float) -> bool: ...

    def close(self) -> None: ...


class GrpcCombinerGateway:
    """One channel per combiner address. An RPC failure is raised as the fedn error of its status, with
    the combiner's name: a plan the combiner refused stays InvalidArgument, a call that ran out of time
    is DeadlineExceeded (an Unavailable), so callers can tell a bad request from an absent peer."""

    def __init__(self, *, tls: TLSFiles | None = None, token: TokenSource = None) -> None:
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()
        self._tls = tls  # TLS to combiners when it names a CA (mutual TLS with the reducer's certificate)
        self._token = token  # the reducer's own token (role reducer), renewed by its source

    def _channel(self, address: str) -> grpc.Channel:
        with self._lock:
            channel = self._channels.get(address)
            if channel is None:
                channel = open_channel(
                    address, tls=self._tls, token=self._token, options=[("grpc.max_receive_message_length", 64 << 20)]
                )
                self._channels[address] = channel
            return channel

    def _stub(self, combiner: CombinerRecord) -> pb_grpc.CombinerStub:
        return pb_grpc.CombinerStub(self._channel(combiner.address))

    def _call(self, combiner: CombinerRecord, method: str, request, timeout_s: float):
        stub = self._stub(combiner)
        try:
            return getattr(stub, method)(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            code = exc.code()
            message = f"combiner {combiner.id} at {combiner.address}: {code.name}: {exc.details()}"
            raise error_from_grpc(code, message) from None

    def run_round(self, combiner: CombinerRecord, plan: RoundPlan, timeout_s: float) -> RoundResult:
        return round_result_from_proto(self._call(combiner, "RunRound", round_plan_to_proto(plan), timeout_s))

    def announce(self, combiner: CombinerRecord, info: Announcement, timeout_s: float) -> bool:
        """Tell a combiner an async session's model moved on; True if it runs that session."""
        return self._call(combiner, "AnnounceModel", announcement_to_proto(info), timeout_s).known

    def abandon(self, combiner: CombinerRecord, session_id: str, reason: str, timeout_s: float) -> bool:
        """Tell a combiner that ``session_id`` was stopped; True if it was running some of it."""
        request = pb.AbandonRoundRequest(session_id=session_id, reason=reason[:200])
        return self._call(combiner, "AbandonRound", request, timeout_s).known

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()


class WatchedGateway:
    """A gateway that tells the registry at once when a combiner does not answer: a call that fails
    with UNAVAILABLE or DEADLINE_EXCEEDED (:class:`~fedn.errors.Unavailable`) marks it unreachable, so
    it gets no clients or rounds until its next heartbeat. Every error is raised on unchanged."""

    def __init__(self, inner: CombinerGateway, registry: CombinerRegistry) -> None:
        self._inner = inner
        self._registry = registry

    def run_round(self, combiner: CombinerRecord, plan: RoundPlan, timeout_s: float) -> RoundResult:
        try:
            return self._inner.run_round(combiner, plan, timeout_s)
        except Unavailable as exc:
            self._registry.mark_unreachable(combiner.id, exc.message)
            raise

    def announce(self, combiner: CombinerRecord, info: Announcement, timeout_s: float) -> bool:
        try:
            return self._inner.announce(combiner, info, timeout_s)
        except Unavailable as exc:
            self._registry.mark_unreachable(combiner.id, exc.message)
            raise

    def abandon(self, combiner: CombinerRecord, session_id: str, reason: str, timeout_s: float) -> bool:
        return self._inner.abandon(combiner, session_id, reason, timeout_s)

    def close(self) -> None:
        self._inner.close()
