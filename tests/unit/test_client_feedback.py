"""The client runtime's error-feedback state: kept per session and codec, with top-k's velocity beside it."""

from __future__ import annotations

import numpy as np

from client.runtime import ClientRuntime
from fedn import wire
from fedn.codec import manifest_of
from fedn.compression import decode_update, parse_compression


def _runtime(base: dict[str, np.ndarray]) -> ClientRuntime:
    runtime = ClientRuntime(object(), reducer=None, name="c1")
    runtime._model_cache = (("m1", ""), manifest_of(base), base)  # the model this client received
    return runtime


def _task(session: str, codec: str) -> wire.TaskInfo:
    return wire.TaskInfo("train", "r1", session, "m1", 1, 60.0, {}, compression=codec)


def test_momentum_velocity_and_residual_carry_over_within_a_session_and_reset_with_it():
    base = {"w": np.zeros(50, np.float32), "n": np.zeros(2, np.int64)}
    manifest = manifest_of(base)
    codec = "topk:ratio=0.1,momentum=0.5"
    uplink = parse_compression(codec)
    runtime = _runtime(base)
    rng = np.random.default_rng(2)
    deltas = [rng.standard_normal(50).astype(np.float32) for _ in range(2)]

    first = runtime._encode_update(_task("s1", codec), uplink, manifest, {"w": deltas[0], "n": base["n"]})
    sent = decode_update(first, base, manifest, uplink)["w"].to_numpy() != 0
    assert sent.sum() == 5 and set(runtime._velocity) == {"w"} and set(runtime._residual) == {"w"}
    np.testing.assert_allclose(runtime._velocity["w"], np.where(sent, 0, deltas[0]))

    runtime._encode_update(_task("s1", codec), uplink, manifest, {"w": deltas[1], "n": base["n"]})
    velocity = runtime._velocity["w"]
    moved = velocity != 0
    np.testing.assert_allclose(velocity[moved], (0.5 * np.where(sent, 0, deltas[0]) + deltas[1])[moved], rtol=1e-6)

    # another session starts from nothing: its first velocity is its own delta, masked
    other = runtime._encode_update(_task("s2", codec), uplink, manifest, {"w": deltas[1], "n": base["n"]})
    sent_other = decode_update(other, base, manifest, uplink)["w"].to_numpy() != 0
    np.testing.assert_allclose(runtime._velocity["w"], np.where(sent_other, 0, deltas[1]))
    np.testing.assert_allclose(runtime._residual["w"], np.where(sent_other, 0, deltas[1]))
