"""Fetching a model from a combiner: checked against its header (size limit, sha256) as it streams."""

from __future__ import annotations

from fedn import wire
from fedn.chunking import ChunkAssembler
from fedn.codec import NamedArrays, TensorSpec, check_dtypes, check_finite, decode_payload, payload_bytes
from fedn.compression import Compression, decode_model_downlink, downlink_payload_bytes
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
    size and sha256 is refused (InvalidModel, ChecksumMismatch), as is a header that does not describe
    ``model_id`` (see :func:`_check_header`) and a model holding NaN or Inf (NonFiniteValues): the client
    trains on nothing a combiner could not have aggregated."""
    request = pb.DownloadModelRequest(
        model_id=model_id, client_id=client_id, compression="" if codec.lossless else codec.text()
    )
    manifest, arrays = _receive(stub.DownloadModel(request, timeout=timeout_s), model_id, max_model_bytes, codec)
    for name, array in arrays.items():
        check_finite(name, array)
    return manifest, arrays


def _receive(stream, model_id: str, max_model_bytes: int, codec: Compression) -> tuple[list[TensorSpec], NamedArrays]:
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
    _check_header(header, model_id, codec)
    try:
        assembler = ChunkAssembler(header.payload_bytes, header.sha256)
    except MemoryError:  # a limit lifted past this host's memory: the round fails, the client stays
        raise PayloadTooLarge(f"model {model_id}: {header.payload_bytes} bytes cannot be held in memory") from None
    for msg in stream:
        if msg.WhichOneof("part") != "data":
            raise InvalidModel("model stream sent a second header, or an empty message, after its header")
        assembler.add(msg.data)
    payload = assembler.finish()
    if codec.lossless:
        return header.tensors, decode_payload(header.tensors, payload)
    return header.tensors, decode_model_downlink(payload, header.tensors, codec)


def _check_header(header: wire.ModelHeaderInfo, model_id: str, codec: Compression) -> None:
    """The header is of ``model_id`` and its manifest one the client can train (tensors of supported
    dtypes, each name once), whose size in ``codec`` is the size it declares: so no buffer is ever sized
    by a declared number alone, and no dtype reaches numpy unchecked."""
    if header.model_id not in ("", model_id):
        raise InvalidModel(f"asked for model {model_id}, the stream sent model {header.model_id}")
    if not header.tensors:
        raise InvalidModel(f"model {model_id} has no tensors")
    check_dtypes(header.tensors)
    names: set[str] = set()
    for spec in header.tensors:
        if spec.name in names:
            raise InvalidModel(f"tensor {spec.name!r} is named twice in the manifest")
        names.add(spec.name)
    size = payload_bytes(header.tensors) if codec.lossless else downlink_payload_bytes(header.tensors, codec)
    if header.payload_bytes != size:
        raise InvalidModel(f"model {model_id} declares {header.payload_bytes} bytes; its manifest describes {size}")
