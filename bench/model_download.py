"""CPU a combiner spends on a model's bytes on the wire: a download's messages, an upload's chunks.

- ``model_download``: every serialized message of one download of a ``--params`` float32 model
  (40 MB by default), held in memory (``--model-cache-bytes`` above it) and streamed from a local
  model store (below it), CPU ms per download, best and median of ``--repeats``.
- ``chunk_framing``: per ``--chunk-bytes`` chunk of that model, a download's data message written by
  fedn.wire_chunks against protobuf (``ModelChunk(data=...).SerializeToString()``), and an upload's
  data chunk read by fedn.wire_chunks against protobuf (``UpdateChunk.FromString(raw).data``), in
  ms for the whole model.

Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time

import numpy as np

from combiner.model_cache import ModelCache
from fedn.chunking import DEFAULT_CHUNK_BYTES, iter_chunks
from fedn.clock import SystemClock
from fedn.codec import encode_model
from fedn.models import model_key
from fedn.store import LocalModelStore
from fedn.v1 import fedn_pb2 as pb
from fedn.wire_chunks import model_data_message, parse_update_chunk

__all__ = ["main"]


def _cpu_ms(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.process_time()  # this process's threads too: a stored model is read on one
        fn()
        times.append(1e3 * (time.process_time() - started))
    return times


def _row(name: str, times: list[float], **extra) -> dict:
    return {
        "bench": name,
        **extra,
        "cpu_ms_best": round(min(times), 2),
        "cpu_ms_median": round(statistics.median(times), 2),
    }


def download_rows(params: int, chunk_bytes: int, repeats: int) -> list[dict]:
    blob = encode_model({"w": np.random.default_rng(0).random(params, dtype=np.float32)})
    rows = []
    with tempfile.TemporaryDirectory() as root:
        store = LocalModelStore(root)
        store.put(model_key("m1"), blob)
        for how, cache_bytes in (("held", len(blob)), ("streamed", 0)):
            cache = ModelCache(store, SystemClock(), model_cache_bytes=cache_bytes, chunk_bytes=chunk_bytes)

            async def one_download(cache: ModelCache = cache) -> int:
                model = await cache.get("m1")
                return sum([len(m) async for m in cache.download_messages(model)])

            asyncio.run(one_download())  # load (and, held, serialize) the model once, as a combiner does
            times = _cpu_ms(lambda cache=cache: asyncio.run(one_download(cache)), repeats)
            rows.append(_row("model_download", times, model=how, params=params, chunk_bytes=chunk_bytes))
    return rows


def framing_rows(params: int, chunk_bytes: int, repeats: int) -> list[dict]:
    payload = np.random.default_rng(1).random(params, dtype=np.float32).tobytes()
    pieces = list(iter_chunks(payload, chunk_bytes))
    raw = [pb.UpdateChunk(data=piece).SerializeToString() for piece in pieces]

    def protobuf_download() -> None:
        for piece in pieces:
            pb.ModelChunk(data=piece).SerializeToString()

    def by_hand_download() -> None:
        for piece in pieces:
            model_data_message(piece)

    def protobuf_upload() -> None:
        for message in raw:
            _ = pb.UpdateChunk.FromString(message).data

    def by_hand_upload() -> None:
        for message in raw:
            _ = parse_update_chunk(message).data

    rows = []
    for side, protobuf, by_hand in (
        ("download", protobuf_download, by_hand_download),
        ("upload", protobuf_upload, by_hand_upload),
    ):
        for how, fn in (("protobuf", protobuf), ("fedn.wire_chunks", by_hand)):
            rows.append(
                _row("chunk_framing", _cpu_ms(fn, repeats), side=side, via=how, params=params, chunk_bytes=chunk_bytes)
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=int, default=10_000_000)
    parser.add_argument("--chunk-bytes", type=int, default=DEFAULT_CHUNK_BYTES)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    for row in download_rows(args.params, args.chunk_bytes, args.repeats) + framing_rows(
        args.params, args.chunk_bytes, args.repeats
    ):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
