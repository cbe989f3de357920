"""Chunking with odd sizes, and the assembler's bounds and digest checks."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedn.chunking import ChunkAssembler, iter_chunks
from fedn.errors import ChecksumMismatch, InvalidModel, PayloadTooLarge


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=0, max_size=5000), st.integers(min_value=1, max_value=777))
def test_chunks_reassemble_exactly(data, chunk_bytes):
    chunks = list(iter_chunks(data, chunk_bytes))
    assert all(0 < len(c) <= chunk_bytes for c in chunks)
    assert all(len(c) == chunk_bytes for c in chunks[:-1])
    asm = ChunkAssembler(len(data), hashlib.sha256(data).hexdigest())
    for c in chunks:
        asm.add(c)
    assert bytes(asm.finish()) == data


def test_assembler_rejects_oversize_before_allocating():
    with pytest.raises(PayloadTooLarge, match="limit"):
        ChunkAssembler(10**12, "0" * 64, max_bytes=1024)


def test_assembler_rejects_overrun_underrun_and_bad_digest():
    data = b"abcdefgh"
    digest = hashlib.sha256(data).hexdigest()
    asm = ChunkAssembler(4, digest)
    with pytest.raises(PayloadTooLarge):
        asm.add(data)
    short = ChunkAssembler(len(data), digest)
    short.add(data[:3])
    with pytest.raises(InvalidModel, match="3 of 8"):
        short.finish()
    wrong = ChunkAssembler(len(data), hashlib.sha256(b"other").hexdigest())
    wrong.add(data)
    with pytest.raises(ChecksumMismatch):
        wrong.finish()


def test_iter_chunks_rejects_nonpositive_size():
    with pytest.raises(ValueError):
        list(iter_chunks(b"x", 0))
