"""gRPC face of the combiner: decode the request, call the router or the model cache, encode the reply.

Errors are mapped to statuses by :func:`combiner.grpc_errors.map_errors`, on every method.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from combiner.grpc_errors import decoded, map_errors, tolerant
from combiner.model_cache import ModelCache
from combiner.router import RunRouter
from fedn import wire, wire_eval
from fedn.audit import AuditLog
from fedn.auth.policy import require_subject
from fedn.auth.rpc import current_principal
from fedn.errors import Conflict, FednError, InvalidArgument, PermissionDenied
from fedn.v1 import fedn_pb2 as pb
from fedn.v1 import fedn_pb2_grpc as pb_grpc
from fedn.wire_chunks import DataChunk, parse_update_chunk

__all__ = ["CombinerServicer"]


class _CapturedHandlers:
    """Stands in for a server to catch the method handlers the generated code registers."""

    def __init__(self) -> None:
        self.service = ""
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, generic_handlers: object) -> None:
        pass  # the same handlers also arrive below, by name

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.service, self.handlers = service, handlers


async def _ended_by_client(context: grpc.aio.ServicerContext) -> None:
    """Raise CancelledError if the request stream ended because the call was cancelled, not half-closed.

    gRPC ends a cancelled call's request stream as if the client had finished it, and cancels the
    handler only later: a cut upload was refused as short (final for its client, who could not send it
    again) or, if all its bytes had come, folded though its client saw CANCELLED. Sending the initial
    metadata settles it: on a cancelled call its batch fails, or the cancellation queued before it lands.
    """
    try:
        await context.send_initial_metadata(())
    except grpc.aio.InternalError:  # the batch failed: the call is gone
        raise asyncio.CancelledError from None


class CombinerServicer(pb_grpc.CombinerServicer):
    def __init__(self, rounds: RunRouter, models: ModelCache, audit: AuditLog) -> None:
        self._rounds = rounds
        self._models = models
        self._audit = audit
        self._beat: tuple[wire.TaskInfo, pb.Task] | None = None  # the last heartbeat, serialized once

    def _heartbeat_proto(self, task: wire.TaskInfo) -> pb.Task:
        """One pass of heartbeats queues one TaskInfo to every stream: build its message once."""
        if self._beat is None or self._beat[0] != task:
            self._beat = (task, wire.task_to_proto(task))
        return self._beat[1]

    def _bind(self, context, client_id: str) -> None:
        """A client acts only as itself (:func:`require_subject`); a refusal is audited."""
        try:
            require_subject(current_principal(), client_id, "client id")
        except PermissionDenied as exc:
            self._record("auth.denied", context, f"client {client_id}", "denied", exc.message)
            raise

    def _record(self, action: str, context, target: str, outcome: str = "ok", detail: str = "") -> None:
        principal = current_principal()
        self._audit.record(
            action,
            subject=principal.subject if principal else "",
            role=principal.role.value if principal else "",
            peer=context.peer() or "",
            target=target,
            outcome=outcome,
            detail=detail,
        )

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Register the generated handlers, but let DownloadModel send messages it serialized itself: a
        held model's chunks are serialized once, not once per client. A request that does not parse
        reaches its method (as :class:`~combiner.grpc_errors.Undecodable`) to be refused there."""
        capture = _CapturedHandlers()
        pb_grpc.add_CombinerServicer_to_server(self, capture)
        handlers = {
            name: h._replace(request_deserializer=tolerant(h.request_deserializer))
            for name, h in capture.handlers.items()
        }
        handlers["DownloadModel"] = handlers["DownloadModel"]._replace(response_serializer=None)  # sent as is
        # an update's data chunks are read as views of what gRPC received, not copied through protobuf twice
        handlers["UploadUpdate"] = handlers["UploadUpdate"]._replace(request_deserializer=tolerant(parse_update_chunk))
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(capture.service, handlers),))
        server.add_registered_method_handlers(capture.service, handlers)

    @map_errors
    async def TaskStream(self, request: pb.TaskStreamRequest, context: grpc.aio.ServicerContext):
        client_id, name = wire.task_stream_request_from_proto(request)
        codecs = wire.task_stream_codecs_from_proto(request)
        principal = current_principal()
        self._bind(context, client_id)
        if principal is not None and self._rounds.has_client(client_id):
            # one stream per identity: a second one (a stolen token, or a stale reconnect) takes nothing over
            raise Conflict(f"client {client_id} already has a task stream here; retry once it has closed")
        conn = self._rounds.connect(client_id, name, codecs)
        try:
            yield self._heartbeat_proto(self._rounds.heartbeat())  # "connected", and how often heartbeats come
            while True:  # heartbeats arrive in the queue too (ClientHub.send_heartbeats): no timer per stream
                task = await conn.tasks.get()
                yield self._heartbeat_proto(task) if task.kind == "heartbeat" else wire.task_to_proto(task)
        finally:
            self._rounds.disconnect(conn)

    @map_errors
    async def DownloadModel(self, request: pb.DownloadModelRequest, context: grpc.aio.ServicerContext):
        model_id, client_id = wire.download_request_from_proto(request)
        if client_id:
            self._bind(context, client_id)
        codec = self._rounds.downlink_codec(model_id, wire.download_compression_from_proto(request))
        model = await self._models.get(model_id)
        if not codec.lossless:
            model = await self._models.downlink(model, codec)
        # Each stream in flight holds a chunk in gRPC's buffers: bound them, or memory grows with clients.
        async with self._models.download_slots(model):
            async for message in self._models.download_messages(model, context):
                yield message  # already serialized (see add_to_server)
        if client_id:
            self._rounds.download_done(model_id, client_id)

    @map_errors
    async def UploadUpdate(self, request_iterator: AsyncIterator[pb.UpdateChunk], context) -> pb.UploadUpdateResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None or isinstance(decoded(first), DataChunk) or first.WhichOneof("part") != "header":
            raise InvalidArgument("an update stream must start with its header")
        header = wire.update_header_from_proto(first.header)
        self._bind(context, header.client_id)

        async def chunks():
            async for msg in request_iterator:
                chunk = decoded(msg)
                if isinstance(chunk, DataChunk) or chunk.WhichOneof("part") == "data":
                    yield chunk.data
                else:
                    raise InvalidArgument("only data chunks may follow the header")
            await _ended_by_client(context)

        try:
            count = await self._rounds.receive_update(header, chunks())
        except FednError as exc:
            target = f"update of {header.client_id} for round {header.round_id}"
            self._record("update.rejected", context, target, "refused", exc.message)
            raise
        return pb.UploadUpdateResponse(round_id=header.round_id, accepted_updates=count)

    @map_errors
    async def RequestUpload(self, request: pb.UploadRequest, context) -> pb.UploadGrant:
        round_id, client_id, size = wire.upload_request_from_proto(request)
        self._bind(context, client_id)
        granted, queued = self._rounds.request_upload(round_id, client_id, size)
        return pb.UploadGrant(granted=granted, queued_before=0 if granted else queued)

    @map_errors
    async def ReportFailure(self, request: pb.ReportFailureRequest, context) -> pb.ReportFailureResponse:
        report = wire.failure_report_from_proto(request)
        self._bind(context, report[1])
        self._rounds.report_failure(*report)
        return pb.ReportFailureResponse()

    @map_errors
    async def ReportEvaluation(self, request: pb.EvaluationReport, context) -> pb.EvaluationReportResponse:
        report = wire_eval.evaluation_report_from_proto(request)
        self._bind(context, report.client_id)
        count = self._rounds.report_evaluation(report)
        return pb.EvaluationReportResponse(accepted_evaluations=count)

    @map_errors
    async def RunRound(self, request: pb.RoundPlan, context) -> pb.RoundResult:
        plan = wire.round_plan_from_proto(request)
        self._record("round.run", context, f"round {plan.round_id} of session {plan.session_id}")
        result = await self._rounds.run_round(plan)
        return wire.round_result_to_proto(result)

    @map_errors
    async def AnnounceModel(self, request: pb.ModelAnnouncement, context) -> pb.AnnounceModelResponse:
        info = wire.announcement_from_proto(request)
        self._record("model.announce", context, f"model {info.model_id} v{info.model_version} of {info.session_id}")
        known = self._rounds.announce(info)
        return pb.AnnounceModelResponse(known=known)

    @map_errors
    async def AbandonRound(self, request: pb.AbandonRoundRequest, context) -> pb.AbandonRoundResponse:
        round_id, session_id, reason = wire_eval.abandon_request_from_proto(request)
        self._record("round.abandon", context, f"round {round_id} of session {session_id}", detail=reason)
        return pb.AbandonRoundResponse(known=self._rounds.abandon(session_id, round_id, reason))
