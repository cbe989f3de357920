"""The simulator's per-client state store: persistence, layout checks, and no cost for clients never touched."""

from __future__ import annotations

import numpy as np
import pytest

from fedn.errors import InvalidArgument
from fedn.sim.client_state import ClientStateStore

LAYOUT = {"w": (3, 4), "b": (4,), "scalar": (), "empty": (0, 2)}


def test_state_persists_across_reopening(tmp_path) -> None:
    store = ClientStateStore(tmp_path, 10, LAYOUT)
    assert store.get(3, "w") is None and 3 not in store
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    store.put(3, "w", w)
    store.put(7, "scalar", np.float32(2.5))
    assert 3 in store and store.slots() == 2
    np.testing.assert_array_equal(store.get(3, "b"), np.zeros(4, dtype=np.float32))  # a new slot is zeros
    store.close()
    again = ClientStateStore(tmp_path, 10, LAYOUT)  # as another worker process, or a later round, opens it
    np.testing.assert_array_equal(again.get(3, "w"), w)
    assert again.get(7, "scalar") == np.float32(2.5) and again.get(7, "scalar").shape == ()
    assert again.get(7, "empty").shape == (0, 2)
    again.put(3, "w", w * 2)  # overwrites in place: no new slot
    assert again.slots() == 2
    np.testing.assert_array_equal(ClientStateStore(tmp_path, 10, LAYOUT).get(3, "w"), w * 2)


def test_get_returns_a_copy(tmp_path) -> None:
    store = ClientStateStore(tmp_path, 2, {"w": (5,)})
    store.put(0, "w", np.ones(5))
    got = store.get(0, "w")
    got[:] = 9
    np.testing.assert_array_equal(store.get(0, "w"), np.ones(5, dtype=np.float32))
    assert got.dtype == np.float32


def test_a_million_declared_clients_cost_nothing_until_used(tmp_path) -> None:
    layout = {"w": (1000,)}
    store = ClientStateStore(tmp_path, 1_000_000, layout)
    index, data = tmp_path / "client-state.index", tmp_path / "client-state.f32"
    assert index.stat().st_size == 8_000_000
    assert index.stat().st_blocks * 512 < 64 * 1024  # sparse: no page of the table written yet
    assert data.stat().st_size == 0
    for client in (5, 999_999):
        store.put(client, "w", np.full(1000, client, dtype=np.float32))
    assert data.stat().st_size == 2 * 4000  # two slots, for the two clients that have state
    assert index.stat().st_blocks * 512 < 64 * 1024  # two pages of the table, not 8 MB
    assert store.get(999_999, "w")[0] == 999_999 and store.get(500_000, "w") is None


def test_bad_use_is_refused_clearly(tmp_path) -> None:
    store = ClientStateStore(tmp_path, 4, {"w": (2,)})
    with pytest.raises(InvalidArgument, match=r"client 4 is outside 0\.\.3"):
        store.put(4, "w", np.zeros(2))
    with pytest.raises(InvalidArgument, match="unknown client state 'v'"):
        store.get(0, "v")
    with pytest.raises(InvalidArgument, match=r"state 'w' has shape \[2\], not \[3\]"):
        store.put(0, "w", np.zeros(3))
    with pytest.raises(InvalidArgument, match="at least one client"):
        ClientStateStore(tmp_path, 0, {"w": (2,)})
    with pytest.raises(InvalidArgument, match="at least one named state"):
        ClientStateStore(tmp_path, 3, {})
