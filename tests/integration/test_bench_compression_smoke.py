"""bench.compression at a toy size prints its JSON lines and compressed updates take fewer bytes; the
per-client state store the simulator's workers share is seen across processes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np

from bench.compression import CODECS, codec_speed, main
from fedn.compression import parse_compression
from fedn.sim.client_state import ClientStateStore


def test_bench_compression_prints_rows_and_bytes_shrink(capsys) -> None:
    # in this process (one interpreter start less); each simulation still runs its worker process
    assert main(["--clients", "4", "--rounds", "1", "--workers", "1", "--no-speed", "--codecs", "int8"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["compression"] for r in rows] == ["none", "int8:block=256"]
    for row in rows:
        assert row["bench"] == "compression_digits" and row["rounds"] == 1 and len(row["accuracy_curve"]) == 1
        assert 0 <= row["final_accuracy"] <= 1 and 0 <= row["final_eval_accuracy"] <= 1
        assert {"uplink_bytes_per_client_round", "bytes_ratio", "accuracy_drop_points", "wall_s"} <= set(row)
    plain, int8 = rows
    assert plain["uplink_bytes_per_client_round"] == 4 * 4810  # the digits MLP's float32 parameters
    assert int8["uplink_bytes_per_client_round"] < plain["uplink_bytes_per_client_round"] / 3.9
    assert int8["bytes_ratio"] >= 3.9 and isinstance(int8["target_met"], bool) and "target_met" not in plain


def test_codec_speed_times_every_codec_of_the_benchmark() -> None:
    rows = codec_speed(size=1000)
    assert [row["compression"] for row in rows] == [parse_compression(c).text() for c in CODECS]
    assert all(row["encode_ms"] >= 0 and row["fold_ms"] >= 0 for row in rows)


def test_client_state_is_shared_across_processes(tmp_path) -> None:
    store = ClientStateStore(tmp_path, 100, {"w": (8,)})
    store.put(3, "w", np.full(8, 1.5))
    other = textwrap.dedent(
        f"""
        import numpy as np
        from pathlib import Path
        from fedn.sim.client_state import ClientStateStore

        store = ClientStateStore(Path({str(tmp_path)!r}), 100, {{"w": (8,)}})
        assert (store.get(3, "w") == 1.5).all()
        store.put(3, "w", store.get(3, "w") * 2)
        store.put(42, "w", np.arange(8))
        """
    )
    subprocess.run([sys.executable, "-c", other], check=True, timeout=60)
    np.testing.assert_array_equal(store.get(3, "w"), np.full(8, 3.0, dtype=np.float32))  # seen without reopening
    np.testing.assert_array_equal(store.get(42, "w"), np.arange(8, dtype=np.float32))
    assert store.slots() == 2
