"""Per-client state that outlives a round (error-feedback residuals, a strategy's control variates), in a
memory-mapped file that every worker process opens.

A million declared clients cost nothing until they are sampled: the slot table holds one int64 per
client in a sparse file (a page is written only when a client near it gets a slot), and a client's
slot of float32 values is appended to the data file the first time its state is written. Within a
batch each client is trained by one worker, so slots are never written concurrently; only handing
out a new slot takes a lock (``flock``), since two workers may allocate at once.

A slot's owner is also kept (one int64 per slot) and the layout is written beside the files, so a
store damaged by a crash or an outside hand (a truncated data file, an index entry pointing at another
client's slot, a different layout) is refused with FailedPrecondition or InvalidArgument rather than
read as zeros or as another client's state. A put marks the client's entry (negated) while it writes,
so a value torn by a process dying mid-write is refused too.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import weakref
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from fedn.errors import FailedPrecondition, InvalidArgument

__all__ = ["ClientStateStore"]

_INDEX = "client-state.index"
_DATA = "client-state.f32"
_LOCK = "client-state.lock"
_OWNERS = "client-state.owners"  # slot -> client + 1, int64 little-endian
_LAYOUT = "client-state.layout.json"


class ClientStateStore:
    """Named float32 states per client index, in ``directory`` (shared by every process that opens it).

    ``layout`` names each state and its shape; it must be the same in every process (a store laid out
    otherwise is refused). :meth:`get` of a state never put is None.
    """

    def __init__(self, directory: Path, clients: int, layout: Mapping[str, tuple[int, ...]]) -> None:
        if clients < 1:
            raise InvalidArgument(f"a client state store needs at least one client, not {clients}")
        if not layout:
            raise InvalidArgument("a client state store needs at least one named state")
        self.directory = Path(directory)
        self.clients = clients
        self._shapes = {name: tuple(int(d) for d in shape) for name, shape in layout.items()}
        if any(d < 0 for shape in self._shapes.values() for d in shape):  # would overlap the next slot
            raise InvalidArgument(f"a client state cannot have a negative dimension: {self._shapes}")
        self._offsets: dict[str, int] = {}
        offset = 0
        for name, shape in self._shapes.items():
            self._offsets[name] = offset
            offset += math.prod(shape)
        self._slot_floats = max(offset, 1)
        self.directory.mkdir(parents=True, exist_ok=True)
        index_path = self.directory / _INDEX
        with open(self.directory / _LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._check_layout()
            try:
                with open(index_path, "ab") as f:  # create once, sparse; never truncate what another process wrote
                    if os.fstat(f.fileno()).st_size < clients * 8:
                        f.truncate(clients * 8)
                # 0: no slot, else slot + 1
                self._index = np.memmap(index_path, dtype=np.int64, mode="r+", shape=(clients,))
            except (OSError, OverflowError, ValueError) as exc:  # more clients than a file or a map can index
                raise InvalidArgument(f"cannot index {clients} clients' state in {self.directory}: {exc}") from None
            # kept open: every get and put checks the data's size and the slot's owner
            self._data = os.open(self.directory / _DATA, os.O_RDWR | os.O_CREAT, 0o644)
            self._owners = os.open(self.directory / _OWNERS, os.O_RDWR | os.O_CREAT, 0o644)
        self._close_files = weakref.finalize(self, _close_fds, self._data, self._owners)

    @property
    def slot_bytes(self) -> int:
        return self._slot_floats * 4

    def __contains__(self, client: int) -> bool:
        return self._slot(client) >= 0

    def get(self, client: int, name: str) -> np.ndarray | None:
        """A copy of ``client``'s state ``name``, or None if the client has no state yet."""
        self._check_name(name)
        slot = self._slot(client)
        if slot < 0:
            return None
        return np.array(self._view(slot, name, mode="r"))  # read-only: a read never grows the file

    def put(self, client: int, name: str, value: np.ndarray) -> None:
        """Store ``value`` (cast to float32) as ``client``'s state ``name``; its other states start as zeros."""
        self._check_name(name)
        value = np.asarray(value, dtype=np.float32)  # a value that cannot be cast fails here, before any write
        if value.shape != self._shapes[name]:
            raise InvalidArgument(f"state {name!r} has shape {list(self._shapes[name])}, not {list(value.shape)}")
        slot = self._slot(client)
        if slot < 0:
            slot = self._allocate(client)
        self._index[client] = -(slot + 1)  # a write under way: a process that dies before its end leaves this mark
        self._view(slot, name, mode="r+")[...] = value  # a shared mapping: other processes see it without a flush
        self._index[client] = slot + 1

    def slots(self) -> int:
        """Slots handed out so far (clients with state)."""
        return os.fstat(self._data).st_size // self.slot_bytes

    def close(self) -> None:
        self._index.flush()
        del self._index
        self._close_files()

    def _allocate(self, client: int) -> int:
        with open(self.directory / _LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            taken = self._slot(client)  # another process may have been first
            if taken >= 0:
                return taken
            size = os.fstat(self._data).st_size
            slot = size // self.slot_bytes
            if size % self.slot_bytes:  # a record cut short by damage: dropped, so the new slot is all zeros
                os.ftruncate(self._data, slot * self.slot_bytes)  # (and its owner, rewritten below, is refused it)
            os.ftruncate(self._data, (slot + 1) * self.slot_bytes)  # zeros, without writing them
            # the owner before the index names the slot: a crash between leaves an unused slot
            os.pwrite(self._owners, (client + 1).to_bytes(8, "little"), slot * 8)
            self._index[client] = slot + 1
            self._index.flush()
            return slot

    def _slot(self, client: int) -> int:
        """``client``'s slot, or -1 if it has none; FailedPrecondition if the files disagree about it (a slot
        past the data, one handed to another client, a write left half done) rather than read a wrong state."""
        entry = int(self._index[self._check(client)])
        if entry == 0:
            return -1
        slot, held = abs(entry) - 1, self.slots()
        if not 0 <= slot < held:
            problem = f"slot {slot}, outside the {held} slots the data file holds"
        elif (owner := self._owner(slot)) != client:
            problem = f"slot {slot}, which was handed to client {owner}" if owner >= 0 else f"unowned slot {slot}"
        elif entry < 0:
            problem = f"slot {slot}, whose last write never finished (its process died mid-write)"
        else:
            return slot
        raise FailedPrecondition(
            f"client state in {self.directory} is damaged: client {client}'s entry names {problem}; "
            "start from a new directory"
        )

    def _owner(self, slot: int) -> int:
        """The client ``slot`` was handed to, or -1 if none is recorded."""
        raw = os.pread(self._owners, 8, slot * 8)
        return int.from_bytes(raw, "little") - 1 if len(raw) == 8 else -1

    def _check_layout(self) -> None:
        """Write the layout beside a new store, or refuse a store laid out otherwise (its slots would be misread)."""
        path = self.directory / _LAYOUT
        wanted = [[name, list(shape)] for name, shape in self._shapes.items()]
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(wanted))
            os.replace(tmp, path)  # whole or absent, whenever a process dies
            return
        try:
            stored = json.loads(path.read_text())
        except ValueError:
            raise FailedPrecondition(
                f"client state in {self.directory} is damaged: {path.name} is unreadable"
            ) from None
        if stored != wanted:
            raise InvalidArgument(
                f"client state in {self.directory} is laid out as {stored}, not {wanted}; use a new directory"
            )

    def _view(self, slot: int, name: str, *, mode: str) -> np.ndarray:
        shape = self._shapes[name]
        size = math.prod(shape)
        if size == 0:
            return np.zeros(shape, dtype=np.float32)  # nothing to map
        start = slot * self.slot_bytes + 4 * self._offsets[name]
        mapped = np.memmap(self.directory / _DATA, dtype=np.float32, mode=mode, offset=start, shape=(size,))
        return mapped.reshape(shape)

    def _check(self, client: int) -> int:
        if not 0 <= client < self.clients:
            raise InvalidArgument(f"client {client} is outside 0..{self.clients - 1}")
        return client

    def _check_name(self, name: str) -> None:
        if name not in self._shapes:
            raise InvalidArgument(f"unknown client state {name!r}; known: {', '.join(self._shapes)}")


def _close_fds(*fds: int) -> None:
    for fd in fds:
        os.close(fd)
