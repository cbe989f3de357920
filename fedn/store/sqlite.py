"""Embedded state store on SQLite (stdlib): one table per record kind, JSON documents."""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from fedn.errors import InvalidArgument, NotFound, StoreError
from fedn.records import ClientRecord, CombinerRecord, ModelRecord, Round, Session
from fedn.store.base import StateStore
from fedn.store.validation import RecordReader, check_page, clip

__all__ = ["SYNCHRONOUS_LEVELS", "SQLiteStateStore"]

logger = logging.getLogger(__name__)

T = TypeVar("T", bound=BaseModel)

_TABLES = ("sessions", "rounds", "models", "clients", "combiners")
SYNCHRONOUS_LEVELS = ("OFF", "NORMAL", "FULL", "EXTRA")  # PRAGMA synchronous = 0, 1, 2, 3


class SQLiteStateStore(StateStore):
    """State in one SQLite file (``:memory:`` for tests). Safe to share between threads.

    The file is in WAL mode with ``synchronous=FULL`` by default: every committed write is synced
    to disk before it returns, so it survives a power loss, not only a crash of the process.
    ``synchronous="NORMAL"`` trades that for speed (a crash of the process still loses nothing).
    A write waits up to ``busy_timeout_s`` for another process's lock, then fails as StoreError.
    """

    def __init__(self, path: str, *, synchronous: str = "FULL", busy_timeout_s: float = 30.0) -> None:
        level = synchronous.upper()
        if level not in SYNCHRONOUS_LEVELS:
            raise InvalidArgument(f"SQLite synchronous must be one of {', '.join(SYNCHRONOUS_LEVELS)}, not {level!r}")
        self._path = path
        self._lock = threading.Lock()
        self._reader = RecordReader(f"SQLite {path}")
        try:
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, timeout=busy_timeout_s)
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if path != ":memory:" and mode != "wal":
                logger.warning("SQLite %s: journal mode is %s, not wal", path, mode)
            self._db.execute(f"PRAGMA synchronous={level}")
            for table in _TABLES:
                self._db.execute(
                    f"CREATE TABLE IF NOT EXISTS {table} ("
                    "id TEXT PRIMARY KEY, parent TEXT, sort REAL NOT NULL, doc TEXT NOT NULL)"
                )
                self._db.execute(f"CREATE INDEX IF NOT EXISTS {table}_parent ON {table}(parent, sort)")
            self._db.commit()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite state store at {path}: {exc}") from exc

    @property
    def synchronous(self) -> str:
        """The connection's ``PRAGMA synchronous`` level, as SQLite reports it (``FULL``, ...)."""
        try:
            with self._lock:
                level = self._db.execute("PRAGMA synchronous").fetchone()[0]
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite read failed: {exc}") from exc
        return SYNCHRONOUS_LEVELS[level]

    def _put(self, table: str, record: BaseModel, parent: str | None, sort: float) -> None:
        self._reader.storable(record)
        try:
            with self._lock:
                self._db.execute(
                    f"INSERT OR REPLACE INTO {table} (id, parent, sort, doc) VALUES (?, ?, ?, ?)",
                    (record.id, parent, sort, record.model_dump_json()),
                )
                self._db.commit()
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite write to {table} failed: {exc}") from exc

    def _get(self, table: str, record_id: str, cls: type[T], what: str) -> T:
        try:
            with self._lock:
                row = self._db.execute(f"SELECT doc FROM {table} WHERE id = ?", (record_id,)).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite read from {table} failed: {exc}") from exc
        if row is None:
            raise NotFound(f"{what} '{clip(record_id)}' not found")
        return self._reader.one(cls, what, record_id, row[0])

    def _list(
        self,
        table: str,
        cls: type[T],
        what: str,
        *,
        parent: str | None = None,
        newest_first: bool = True,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[T]:
        """``limit=None`` lists all."""
        check_page(0 if limit is None else limit, offset)
        order = "DESC" if newest_first else "ASC"
        where, args = ("WHERE parent = ?", [parent]) if parent is not None else ("", [])
        try:
            with self._lock:
                rows = self._db.execute(
                    f"SELECT id, doc FROM {table} {where} ORDER BY sort {order}, id {order} LIMIT ? OFFSET ?",
                    [*args, -1 if limit is None else limit, offset],
                ).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite read from {table} failed: {exc}") from exc
        return self._reader.many(cls, what, rows)

    def put_session(self, session: Session) -> None:
        self._put("sessions", session, None, session.created_at)

    def get_session(self, session_id: str) -> Session:
        return self._get("sessions", session_id, Session, "session")

    def list_sessions(self, *, limit: int = 100, offset: int = 0) -> list[Session]:
        return self._list("sessions", Session, "session", limit=limit, offset=offset)

    def put_round(self, round_: Round) -> None:
        self._put("rounds", round_, round_.session_id, float(round_.index))

    def get_round(self, round_id: str) -> Round:
        return self._get("rounds", round_id, Round, "round")

    def list_rounds(self, session_id: str) -> list[Round]:
        return self._list("rounds", Round, "round", parent=session_id, newest_first=False)

    def put_model(self, model: ModelRecord) -> None:
        self._put("models", model, model.session_id, model.created_at)

    def get_model(self, model_id: str) -> ModelRecord:
        return self._get("models", model_id, ModelRecord, "model")

    def list_models(self, *, session_id: str | None = None, limit: int = 100, offset: int = 0) -> list[ModelRecord]:
        return self._list("models", ModelRecord, "model", parent=session_id, limit=limit, offset=offset)

    def put_client(self, client: ClientRecord) -> None:
        self._put("clients", client, client.combiner_id, client.assigned_at)

    def get_client(self, client_id: str) -> ClientRecord:
        return self._get("clients", client_id, ClientRecord, "client")

    def list_clients(self, *, limit: int = 1000, offset: int = 0) -> list[ClientRecord]:
        return self._list("clients", ClientRecord, "client", limit=limit, offset=offset)

    def put_combiner(self, combiner: CombinerRecord) -> None:
        self._put("combiners", combiner, None, combiner.registered_at)

    def get_combiner(self, combiner_id: str) -> CombinerRecord:
        return self._get("combiners", combiner_id, CombinerRecord, "combiner")

    def list_combiners(self) -> list[CombinerRecord]:
        return self._list("combiners", CombinerRecord, "combiner", newest_first=False)

    def close(self) -> None:
        with self._lock:
            self._db.close()
