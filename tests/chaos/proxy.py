"""A loopback TCP proxy in front of MongoDB that counts write commands and can freeze between two of them.

It parses the MongoDB wire protocol only as far as it must: each message's 16-byte header (int32
length, requestID, responseTo, opCode) and, for OP_MSG (opCode 2013), the body section (kind 0),
a BSON document whose first key is the command name and whose value is the collection. ``insert``,
``update``, ``delete`` and ``findAndModify`` count as writes; everything else (handshakes, reads,
OP_COMPRESSED, legacy opcodes) is forwarded untouched.

:meth:`WireProxy.arm` makes the window between two writes deterministic: after ``after`` more
matching writes have been forwarded, the next matching write is held and nothing more is forwarded in
either direction on any connection, so the store holds exactly the first ``after`` writes. The
harness then kills the client process (the reducer) and calls :meth:`WireProxy.release`, which drops
every held connection.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

import bson

__all__ = ["WRITE_COMMANDS", "WireProxy", "WriteSeen", "command_of"]

OP_MSG = 2013
WRITE_COMMANDS = frozenset({"insert", "update", "delete", "findandmodify"})
_HEADER = struct.Struct("<iiii")
_MAX_MESSAGE = 48 * 1024 * 1024  # MongoDB's maxMessageSizeBytes; anything larger is not the protocol


@dataclass(frozen=True)
class WriteSeen:
    """One write command forwarded to the server, in the order the proxy saw it (``seq`` from 1)."""

    seq: int
    command: str
    collection: str


def command_of(message: bytes) -> tuple[str, str] | None:
    """``(command name lower-cased, its value if a string)`` of an OP_MSG, or None for any other message."""
    if len(message) < _HEADER.size + 5:
        return None
    _, _, _, opcode = _HEADER.unpack_from(message)
    if opcode != OP_MSG:
        return None
    pos = _HEADER.size + 4  # flagBits
    while pos < len(message):
        kind = message[pos]
        pos += 1
        (size,) = struct.unpack_from("<i", message, pos)
        if kind == 0:
            doc = bson.decode(message[pos : pos + size])
            if not doc:
                return None
            name, value = next(iter(doc.items()))
            return name.lower(), value if isinstance(value, str) else ""
        pos += size  # kind 1: a document sequence, its size includes the size field
    return None


def _read_exact(sock: socket.socket, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        part = sock.recv(min(n - got, 1 << 20))
        if not part:
            raise ConnectionError("peer closed")
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _read_message(sock: socket.socket) -> bytes:
    header = _read_exact(sock, _HEADER.size)
    (length,) = struct.unpack_from("<i", header)
    if length < _HEADER.size or length > _MAX_MESSAGE:
        raise ConnectionError(f"not a MongoDB message (length {length})")
    return header + _read_exact(sock, length - _HEADER.size)


class _Pair:
    """One proxied connection: the client side and the upstream side."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream

    def close(self) -> None:
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


class WireProxy:
    """Listens on ``127.0.0.1:port`` (a free one) and forwards to ``upstream``; use as a context manager."""

    def __init__(self, upstream: tuple[str, int], host: str = "127.0.0.1") -> None:
        self._upstream = upstream
        self._listener = socket.create_server((host, 0))
        self._listener.settimeout(0.2)
        self.address = self._listener.getsockname()[:2]
        self._lock = threading.Lock()
        self._gate = threading.Condition(self._lock)
        self._pairs: set[_Pair] = set()
        self._writes: list[WriteSeen] = []
        self._frozen = False
        self.held: WriteSeen | None = None  # the write held by the last freeze
        self._armed_left: int | None = None
        self._armed_collections: frozenset[str] = frozenset()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept_loop, name="proxy-accept", daemon=True)

    @property
    def port(self) -> int:
        return self.address[1]

    def __enter__(self) -> WireProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._acceptor.start()

    def stop(self) -> None:
        self._stopping.set()
        with self._gate:
            self._frozen = False
            self._armed_left = None
            self._gate.notify_all()
        self._acceptor.join(5)
        with contextlib.suppress(OSError):
            self._listener.close()
        self._drop_all()
        for thread in self._threads:
            thread.join(5)

    # -- control ------------------------------------------------------------

    @property
    def writes(self) -> list[WriteSeen]:
        with self._lock:
            return list(self._writes)

    @property
    def frozen(self) -> bool:
        with self._lock:
            return self._frozen

    def arm(self, after: int, collections: Iterable[str] = ()) -> None:
        """Freeze at the matching write that follows ``after`` more matching ones (writes to one of
        ``collections``; any collection when empty)."""
        with self._gate:
            self._armed_left = after
            self._armed_collections = frozenset(collections)

    def disarm(self) -> None:
        with self._gate:
            self._armed_left = None

    def wait_frozen(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._gate:
            while not self._frozen:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._gate.wait(left)
            return True

    def release(self) -> None:
        """Unfreeze, dropping every connection open now (the held write is never forwarded)."""
        self._drop_all()
        with self._gate:
            self._frozen = False
            self._armed_left = None
            self._gate.notify_all()

    def _drop_all(self) -> None:
        with self._lock:
            pairs, self._pairs = list(self._pairs), set()
        for pair in pairs:
            pair.close()

    # -- forwarding ---------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                frozen = self._frozen
            try:
                if frozen:  # a frozen store answers nobody, new connections included
                    raise OSError("proxy frozen")
                upstream = socket.create_connection(self._upstream, timeout=5)
                upstream.settimeout(None)
                client.settimeout(None)
            except OSError:
                with contextlib.suppress(OSError):
                    client.close()
                continue
            pair = _Pair(client, upstream)
            with self._lock:
                self._pairs.add(pair)
            for target, name in ((self._client_to_server, "c2s"), (self._server_to_client, "s2c")):
                thread = threading.Thread(target=target, args=(pair,), name=f"proxy-{name}", daemon=True)
                thread.start()
                self._threads.append(thread)
            self._threads = [t for t in self._threads if t.is_alive()]

    def _wait_unfrozen(self, pair: _Pair) -> bool:
        """Block while frozen; False when the connection was dropped meanwhile."""
        with self._gate:
            while self._frozen and not self._stopping.is_set():
                self._gate.wait(0.2)
            return pair in self._pairs

    def _client_to_server(self, pair: _Pair) -> None:
        try:
            while True:
                message = _read_message(pair.client)
                held = not self._admit(message)
                if not self._wait_unfrozen(pair) or held:  # a held write is dropped with its connection
                    return
                pair.upstream.sendall(message)
        except (OSError, ConnectionError):
            pass
        finally:
            self._forget(pair)

    def _admit(self, message: bytes) -> bool:
        """Count a write; False when this write must be held (the proxy is now frozen)."""
        parsed = command_of(message)
        if parsed is None or parsed[0] not in WRITE_COMMANDS:
            return True
        command, collection = parsed
        with self._gate:
            matches = not self._armed_collections or collection in self._armed_collections
            if self._armed_left is not None and matches:
                if self._armed_left == 0:
                    self.held = WriteSeen(len(self._writes) + 1, command, collection)
                    self._frozen = True
                    self._armed_left = None
                    self._gate.notify_all()
                    return False
                self._armed_left -= 1
            self._writes.append(WriteSeen(len(self._writes) + 1, command, collection))
        return True

    def _server_to_client(self, pair: _Pair) -> None:
        try:
            while True:
                data = pair.upstream.recv(1 << 16)
                if not data or not self._wait_unfrozen(pair):
                    return
                pair.client.sendall(data)
        except OSError:
            pass
        finally:
            self._forget(pair)

    def _forget(self, pair: _Pair) -> None:
        with self._lock:
            self._pairs.discard(pair)
        pair.close()
