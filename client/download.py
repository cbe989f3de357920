"""Fetching a model from a combiner: checked against its header (size limit, sha256) as it streams."""

from __future__ import annotations

from fedn import wire
from fedn.chunking import ChunkAssembler
from fedn.codec import NamedArrays, TensorSpec, decode_payload
from fedn.compression import Compression, decode_model_downlink
from fedn.errors import InvalidModel, PayloadTooLarge
from fedn.v1 import fedn_pb2 as pb
from fedn.v1 import fedn_pb2_grpc as pb_grpc

__all__ = ["download_model"]


def download_model(
    stub: pb_grpc.CombinerStub,
    model_id: str,
    client_id: str,
    *,
    timeout_s: float,
    max_model_bytes: int,
    codec: Compression,
) -> tuple[list[TensorSpec], NamedArrays]:
    """Model ``model_id`` as ``codec`` decodes it. One larger than ``max_model_bytes`` is refused from its
    header (PayloadTooLarge), before any of it is downloaded; one whose bytes do not match the header's
    size and sha256 is refused (InvalidModel, ChecksumMismatch)."""
    request = pb.DownloadModelRequest(
        model_id=model_id, client_id=client_id, compression="" if codec.lossless else codec.text()
    )
    stream = stub.DownloadModel(request, timeout=timeout_s)
    first = next(stream, None)
    if first is None or first.WhichOneof("part") != "header":
        raise InvalidModel("model stream did not start with a header")
    header = wire.model_header_from_proto(first.header)
    if header.payload_bytes > max_model_bytes:
        stream.cancel()  # refused from its header: none of it is downloaded
        raise PayloadTooLarge(
            f"model {model_id} has {header.payload_bytes} bytes, larger than this client accepts "
            f"({max_model_bytes}, --max-model-bytes)"
        )
    assembler = ChunkAssembler(header.payload_bytes, header.sha256)
    for msg in stream:
        assembler.add(msg.data)
    payload = assembler.finish()
    if codec.lossless:
        return header.tensors, decode_payload(header.tensors, payload)
    return header.tensors, decode_model_downlink(payload, header.tensors, codec)
