"""Data chunks framed by hand (fedn.wire_chunks): a download's messages written as protobuf would write
them and re-chunked from the model store's pieces whatever their sizes; an upload's read as protobuf
would read them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from combiner.model_cache import ModelCache
from fedn.clock import ManualClock
from fedn.codec import encode_model
from fedn.errors import InvalidModel
from fedn.models import model_key
from fedn.store import LocalModelStore
from fedn.v1 import fedn_pb2 as pb
from fedn.wire_chunks import DataChunk, model_data_message, parse_update_chunk


@pytest.mark.parametrize("size", [0, 1, 127, 128, 300, 16_383, 16_384, 2_097_151, 2_097_152 + 5])
def test_a_data_message_is_protobufs_own_encoding(size: int) -> None:
    data = bytes(np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8))
    expected = pb.ModelChunk(data=data).SerializeToString()
    assert model_data_message(data) == expected
    third = size // 3  # pieces of any buffer type, end to end
    pieces = (data[:third], bytearray(data[third : 2 * third]), memoryview(data)[2 * third :])
    assert model_data_message(*pieces) == expected
    assert pb.ModelChunk.FromString(model_data_message(*pieces)).data == data


class _IrregularStore(LocalModelStore):
    """Hands out a blob in pieces of sizes unrelated to the chunk size asked for (as a remote store may)."""

    def __init__(self, root, sizes: list[int]) -> None:
        super().__init__(root)
        self.sizes = sizes

    def iter_chunks(self, key: str, chunk_bytes: int) -> Iterator[bytes]:
        blob = b"".join(super().iter_chunks(key, 1 << 20))
        start, turn = 0, 0
        while start < len(blob):
            size = self.sizes[turn % len(self.sizes)]
            yield blob[start : start + size]
            start, turn = start + size, turn + 1


@pytest.mark.parametrize("sizes", [[1000], [1], [7, 5000, 333], [64 * 1024 + 1], [10**7]])
def test_a_streamed_download_is_rechunked_exactly_whatever_the_stores_pieces(tmp_path, sizes) -> None:
    arrays = {"w": np.arange(20_000, dtype=np.float32), "b": np.arange(7, dtype=np.int64)}
    store = _IrregularStore(tmp_path, sizes)
    blob = encode_model(arrays)
    store.put(model_key("m1"), blob)

    async def download() -> list[bytes]:
        cache = ModelCache(store, ManualClock(), model_cache_bytes=0, chunk_bytes=4096)  # streamed, not held
        model = await cache.get("m1")
        return [message async for message in cache.download_messages(model)]

    messages = asyncio.run(download())
    header = pb.ModelChunk.FromString(messages[0]).header
    data = [pb.ModelChunk.FromString(m).data for m in messages[1:]]
    assert all(len(d) == 4096 for d in data[:-1]) and 0 < len(data[-1]) <= 4096
    payload = b"".join(data)
    assert len(payload) == header.payload_bytes and blob.endswith(payload)


def test_a_blob_that_shrank_in_the_store_is_refused_mid_download(tmp_path) -> None:
    store = _IrregularStore(tmp_path, [3000])
    store.put(model_key("m1"), encode_model({"w": np.zeros(10_000, dtype=np.float32)}))

    async def download() -> None:
        cache = ModelCache(store, ManualClock(), model_cache_bytes=0, chunk_bytes=4096)
        model = await cache.get("m1")
        store.put(model_key("m1"), encode_model({"w": np.zeros(9_000, dtype=np.float32)}))
        async for _ in cache.download_messages(model):
            pass

    with pytest.raises(InvalidModel, match="changed in the store while it was served"):
        asyncio.run(download())


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16_384, 2_097_152 + 5])
def test_an_update_data_chunk_is_read_as_a_view_of_what_arrived(size: int) -> None:
    data = bytes(np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8))
    raw = pb.UpdateChunk(data=data).SerializeToString()
    chunk = parse_update_chunk(raw)
    assert isinstance(chunk, DataChunk) and bytes(chunk.data) == data
    assert chunk.data.obj is raw  # no copy


def test_anything_but_one_plain_data_field_goes_through_protobuf() -> None:
    header = pb.UpdateChunk(header=pb.UpdateHeader(round_id="r1", client_id="c1")).SerializeToString()
    parsed = parse_update_chunk(header)
    assert isinstance(parsed, pb.UpdateChunk) and parsed.header.round_id == "r1"
    twice = pb.UpdateChunk(data=b"ab").SerializeToString() + pb.UpdateChunk(data=b"xyz").SerializeToString()
    parsed = parse_update_chunk(twice)  # a field given twice: protobuf keeps the last
    assert isinstance(parsed, pb.UpdateChunk) and parsed.data == b"xyz"
    unknown = pb.UpdateChunk(data=b"ab").SerializeToString() + b"\x18\x01"  # an unknown varint field 3
    parsed = parse_update_chunk(unknown)
    assert isinstance(parsed, pb.UpdateChunk) and parsed.data == b"ab"
    assert parse_update_chunk(b"") == pb.UpdateChunk()  # an empty message, as protobuf reads it


@pytest.mark.parametrize(
    "raw",
    [
        b"\x12",  # a tag without its length
        b"\x12\x05ab",  # shorter than its length
        b"\x12" + b"\xff" * 11,  # a length that never ends
        b"\x12\x80",  # a length cut short
    ],
)
def test_malformed_update_chunks_are_refused_by_protobuf(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        parse_update_chunk(raw)


def _pieces() -> st.SearchStrategy[bytes]:
    """Bytes near what a client sends: data and header messages, their concatenations, lengths written
    with redundant varint bytes, cut short or run long, and noise."""
    data = st.binary(max_size=300).map(lambda b: pb.UpdateChunk(data=b).SerializeToString())
    header = st.text(max_size=20).map(lambda s: pb.UpdateChunk(header=pb.UpdateHeader(round_id=s)).SerializeToString())
    padded = st.tuples(st.binary(max_size=200), st.integers(1, 9)).map(
        lambda t: b"\x12" + _padded_varint(len(t[0]), t[1]) + t[0]
    )
    message = st.one_of(data, header, padded, st.binary(max_size=40))
    joined = st.lists(message, min_size=1, max_size=3).map(b"".join)
    return st.one_of(
        joined,
        st.tuples(joined, st.integers(0, 400)).map(lambda t: t[0][: t[1]]),  # cut anywhere
        st.tuples(joined, st.binary(min_size=1, max_size=8)).map(lambda t: t[0] + t[1]),  # trailing bytes
    )


def _padded_varint(value: int, extra: int) -> bytes:
    """``value`` as a varint with ``extra`` redundant continuation bytes (valid, longer than needed)."""
    out = bytearray()
    while True:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
        if value == 0:
            break
    out.extend([0x80] * (extra - 1))
    out.append(0)
    return bytes(out)


@settings(max_examples=600, deadline=None)
@given(raw=_pieces())
def test_an_upload_message_reads_exactly_as_protobuf_reads_it(raw: bytes) -> None:
    """Whatever arrives, the hand reader and protobuf agree: both refuse it, or both read the same
    data, or it went through protobuf itself."""
    try:
        expected = pb.UpdateChunk.FromString(raw)
    except DecodeError:
        with pytest.raises(DecodeError):
            parse_update_chunk(raw)
        return
    got = parse_update_chunk(raw)
    if isinstance(got, DataChunk):
        assert expected.WhichOneof("part") == "data" and bytes(got.data) == expected.data
    else:
        assert got == expected
