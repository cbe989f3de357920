"""Embedded state store on SQLite (stdlib): one table per record kind, JSON documents."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from fedn.errors import NotFound, StoreError
from fedn.records import ClientRecord, CombinerRecord, ModelRecord, Round, Session
from fedn.store.base import StateStore

__all__ = ["SQLiteStateStore"]

T = TypeVar("T", bound=BaseModel)

_TABLES = ("sessions", "rounds", "models", "clients", "combiners")


class SQLiteStateStore(StateStore):
    """State in one SQLite file (``:memory:`` for tests). Safe to share between threads."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._lock = threading.Lock()
        try:
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            for table in _TABLES:
                self._db.execute(
                    f"CREATE TABLE IF NOT EXISTS {table} ("
                    "id TEXT PRIMARY KEY, parent TEXT, sort REAL NOT NULL, doc TEXT NOT NULL)"
                )
                self._db.execute(f"CREATE INDEX IF NOT EXISTS {table}_parent ON {table}(parent, sort)")
            self._db.commit()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite state store at {path}: {exc}") from exc

    def _put(self, table: str, record: BaseModel, parent: str | None, sort: float) -> None:
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
            raise NotFound(f"{what} {record_id!r} not found")
        return cls.model_validate_json(row[0])

    def _list(
        self,
        table: str,
        cls: type[T],
        *,
        parent: str | None = None,
        newest_first: bool = True,
        limit: int = -1,
        offset: int = 0,
    ) -> list[T]:
        order = "DESC" if newest_first else "ASC"
        where, args = ("WHERE parent = ?", [parent]) if parent is not None else ("", [])
        try:
            with self._lock:
                rows = self._db.execute(
                    f"SELECT doc FROM {table} {where} ORDER BY sort {order}, id {order} LIMIT ? OFFSET ?",
                    [*args, limit, offset],
                ).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite read from {table} failed: {exc}") from exc
        return [cls.model_validate_json(r[0]) for r in rows]

    def put_session(self, session: Session) -> None:
        self._put("sessions", session, None, session.created_at)

    def get_session(self, session_id: str) -> Session:
        return self._get("sessions", session_id, Session, "session")

    def list_sessions(self, *, limit: int = 100, offset: int = 0) -> list[Session]:
        return self._list("sessions", Session, limit=limit, offset=offset)

    def put_round(self, round_: Round) -> None:
        self._put("rounds", round_, round_.session_id, float(round_.index))

    def get_round(self, round_id: str) -> Round:
        return self._get("rounds", round_id, Round, "round")

    def list_rounds(self, session_id: str) -> list[Round]:
        return self._list("rounds", Round, parent=session_id, newest_first=False)

    def put_model(self, model: ModelRecord) -> None:
        self._put("models", model, model.session_id, model.created_at)

    def get_model(self, model_id: str) -> ModelRecord:
        return self._get("models", model_id, ModelRecord, "model")

    def list_models(self, *, session_id: str | None = None, limit: int = 100, offset: int = 0) -> list[ModelRecord]:
        return self._list("models", ModelRecord, parent=session_id, limit=limit, offset=offset)

    def put_client(self, client: ClientRecord) -> None:
        self._put("clients", client, client.combiner_id, client.assigned_at)

    def get_client(self, client_id: str) -> ClientRecord:
        return self._get("clients", client_id, ClientRecord, "client")

    def list_clients(self, *, limit: int = 1000, offset: int = 0) -> list[ClientRecord]:
        return self._list("clients", ClientRecord, limit=limit, offset=offset)

    def put_combiner(self, combiner: CombinerRecord) -> None:
        self._put("combiners", combiner, None, combiner.registered_at)

    def get_combiner(self, combiner_id: str) -> CombinerRecord:
        return self._get("combiners", combiner_id, CombinerRecord, "combiner")

    def list_combiners(self) -> list[CombinerRecord]:
        return self._list("combiners", CombinerRecord, newest_first=False)

    def close(self) -> None:
        with self._lock:
            self._db.close()
