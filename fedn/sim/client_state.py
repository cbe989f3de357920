"""Per-client state that outlives a round (error-feedback residuals, a strategy's control variates), in a
memory-mapped file that every worker process opens.

A million declared clients cost nothing until they are sampled: the slot table holds one int64 per
client in a sparse file (a page is written only when a client near it gets a slot), and a client's
slot of float32 values is appended to the data file the first time its state is written. Within a
batch each client is trained by one worker, so slots are never written concurrently; only handing
out a new slot takes a lock (``flock``), since two workers may allocate at once.
"""

from __future__ import annotations

import fcntl
import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from fedn.errors import InvalidArgument

__all__ = ["ClientStateStore"]

_INDEX = "client-state.index"
_DATA = "client-state.f32"
_LOCK = "client-state.lock"


class ClientStateStore:
    """Named float32 states per client index, in ``directory`` (shared by every process that opens it).

    ``layout`` names each state and its shape; it must be the same in every process. :meth:`get` of a
    state never put is None.
    """

    def __init__(self, directory: Path, clients: int, layout: Mapping[str, tuple[int, ...]]) -> None:
        if clients < 1:
            raise InvalidArgument(f"a client state store needs at least one client, not {clients}")
        if not layout:
            raise InvalidArgument("a client state store needs at least one named state")
        self.directory = Path(directory)
        self.clients = clients
        self._shapes = {name: tuple(int(d) for d in shape) for name, shape in layout.items()}
        self._offsets: dict[str, int] = {}
        offset = 0
        for name, shape in self._shapes.items():
            self._offsets[name] = offset
            offset += math.prod(shape)
        self._slot_floats = max(offset, 1)
        self.directory.mkdir(parents=True, exist_ok=True)
        index_path = self.directory / _INDEX
        with open(index_path, "ab") as f:  # create once, sparse; never truncate what another process wrote
            if os.fstat(f.fileno()).st_size < clients * 8:
                f.truncate(clients * 8)
        self._index = np.memmap(index_path, dtype=np.int64, mode="r+", shape=(clients,))  # 0: no slot, else slot + 1
        (self.directory / _DATA).touch()

    @property
    def slot_bytes(self) -> int:
        return self._slot_floats * 4

    def __contains__(self, client: int) -> bool:
        return bool(self._index[self._check(client)])

    def get(self, client: int, name: str) -> np.ndarray | None:
        """A copy of ``client``'s state ``name``, or None if the client has no state yet."""
        self._check_name(name)
        slot = int(self._index[self._check(client)]) - 1
        if slot < 0:
            return None
        return np.array(self._view(slot, name))

    def put(self, client: int, name: str, value: np.ndarray) -> None:
        """Store ``value`` (cast to float32) as ``client``'s state ``name``; its other states start as zeros."""
        self._check_name(name)
        value = np.asarray(value)
        if value.shape != self._shapes[name]:
            raise InvalidArgument(f"state {name!r} has shape {list(self._shapes[name])}, not {list(value.shape)}")
        slot = int(self._index[self._check(client)]) - 1
        if slot < 0:
            slot = self._allocate(client)
        self._view(slot, name)[...] = value  # a shared mapping: other processes see it without a flush

    def slots(self) -> int:
        """Slots handed out so far (clients with state)."""
        return os.stat(self.directory / _DATA).st_size // self.slot_bytes

    def close(self) -> None:
        self._index.flush()
        del self._index

    def _allocate(self, client: int) -> int:
        with open(self.directory / _LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            taken = int(self._index[client]) - 1  # another process may have been first
            if taken >= 0:
                return taken
            with open(self.directory / _DATA, "r+b") as data:
                size = os.fstat(data.fileno()).st_size
                slot = size // self.slot_bytes
                data.truncate(size + self.slot_bytes)  # zeros, without writing them
            self._index[client] = slot + 1
            self._index.flush()
            return slot

    def _view(self, slot: int, name: str) -> np.ndarray:
        shape = self._shapes[name]
        size = math.prod(shape)
        if size == 0:
            return np.zeros(shape, dtype=np.float32)  # nothing to map
        start = slot * self.slot_bytes + 4 * self._offsets[name]
        mapped = np.memmap(self.directory / _DATA, dtype=np.float32, mode="r+", offset=start, shape=(size,))
        return mapped.reshape(shape)

    def _check(self, client: int) -> int:
        if not 0 <= client < self.clients:
            raise InvalidArgument(f"client {client} is outside 0..{self.clients - 1}")
        return client

    def _check_name(self, name: str) -> None:
        if name not in self._shapes:
            raise InvalidArgument(f"unknown client state {name!r}; known: {', '.join(self._shapes)}")
