"""Embedded state store on SQLite (stdlib): one table per record kind, JSON documents."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from fedn.errors import InvalidArgument, NotFound, StoreError
from fedn.records import AuditEvent, ClientRecord, CombinerRecord, ModelRecord, Round, Session, TokenRecord
from fedn.store.base import PageKey, StateStore
from fedn.store.validation import RecordReader, check_page, check_time, clip

__all__ = ["SYNCHRONOUS_LEVELS", "SQLiteStateStore"]

logger = logging.getLogger(__name__)

T = TypeVar("T", bound=BaseModel)
_IN_BATCH = 500  # ids per SELECT ... IN (...): under SQLite's limit of bound parameters

_TABLES = ("sessions", "rounds", "models", "clients", "combiners")
SYNCHRONOUS_LEVELS = ("OFF", "NORMAL", "FULL", "EXTRA")  # PRAGMA synchronous = 0, 1, 2, 3
# The audit log and tokens are filtered on more than a parent, so their columns are their own.
_DDL = (
    "CREATE TABLE IF NOT EXISTS audit (id TEXT PRIMARY KEY, time REAL NOT NULL, action TEXT NOT NULL, "
    "subject TEXT NOT NULL, doc TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS audit_time ON audit(time, id)",
    "CREATE INDEX IF NOT EXISTS audit_action ON audit(action, time)",
    "CREATE INDEX IF NOT EXISTS audit_subject ON audit(subject, time)",
    "CREATE TABLE IF NOT EXISTS tokens (id TEXT PRIMARY KEY, issued_at REAL NOT NULL, expires_at REAL NOT NULL, "
    "revoked INTEGER NOT NULL, doc TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS tokens_expires ON tokens(expires_at)",
    "CREATE INDEX IF NOT EXISTS tokens_revoked ON tokens(revoked, expires_at)",
)


def _after(column: str, after: PageKey | None, newest_first: bool) -> tuple[list[str], list]:
    """The keyset condition of a page that starts after ``after`` in ``(column, id)`` order."""
    if after is None:
        return [], []
    check_time(after.sort, "cursor")
    op = "<" if newest_first else ">"
    return [f"({column} {op} ? OR ({column} = ? AND id {op} ?))"], [after.sort, after.sort, after.id]


def _where(clauses: list[str]) -> str:
    return f"WHERE {' AND '.join(clauses)} " if clauses else ""


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
            for statement in _DDL:
                self._db.execute(statement)
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
        after: PageKey | None = None,
    ) -> list[T]:
        """``limit=None`` lists all."""
        check_page(0 if limit is None else limit, offset)
        order = "DESC" if newest_first else "ASC"
        clauses, args = (["parent = ?"], [parent]) if parent is not None else ([], [])
        keyset, keyset_args = _after("sort", after, newest_first)
        rows = self._rows(
            table,
            f"SELECT id, doc FROM {table} {_where(clauses + keyset)}ORDER BY sort {order}, id {order} LIMIT ? OFFSET ?",
            [*args, *keyset_args, -1 if limit is None else limit, offset],
        )
        return self._reader.many(cls, what, rows)

    def _count(self, table: str, clauses: list[str], args: list) -> int:
        return self._rows(table, f"SELECT COUNT(*) FROM {table} {_where(clauses)}", args)[0][0]

    def put_session(self, session: Session) -> None:
        self._put("sessions", session, None, session.created_at)

    def get_session(self, session_id: str) -> Session:
        return self._get("sessions", session_id, Session, "session")

    def list_sessions(self, *, limit: int = 100, offset: int = 0, after: PageKey | None = None) -> list[Session]:
        return self._list("sessions", Session, "session", limit=limit, offset=offset, after=after)

    def count_sessions(self) -> int:
        return self._count("sessions", [], [])

    def put_round(self, round_: Round) -> None:
        self._put("rounds", round_, round_.session_id, float(round_.index))

    def get_round(self, round_id: str) -> Round:
        return self._get("rounds", round_id, Round, "round")

    def list_rounds(self, session_id: str, *, limit: int | None = None, after: PageKey | None = None) -> list[Round]:
        return self._list("rounds", Round, "round", parent=session_id, newest_first=False, limit=limit, after=after)

    def count_rounds(self, session_id: str) -> int:
        return self._count("rounds", ["parent = ?"], [session_id])

    def put_model(self, model: ModelRecord) -> None:
        self._put("models", model, model.session_id, model.created_at)

    def get_model(self, model_id: str) -> ModelRecord:
        return self._get("models", model_id, ModelRecord, "model")

    def list_models(
        self, *, session_id: str | None = None, limit: int = 100, offset: int = 0, after: PageKey | None = None
    ) -> list[ModelRecord]:
        return self._list("models", ModelRecord, "model", parent=session_id, limit=limit, offset=offset, after=after)

    def count_models(self, *, session_id: str | None = None) -> int:
        return self._count("models", *((["parent = ?"], [session_id]) if session_id is not None else ([], [])))

    def put_client(self, client: ClientRecord) -> None:
        self._put("clients", client, client.combiner_id, client.assigned_at)

    def get_client(self, client_id: str) -> ClientRecord:
        return self._get("clients", client_id, ClientRecord, "client")

    def put_clients(self, clients: Iterable[ClientRecord]) -> None:
        """One transaction, one sync, however many clients."""
        rows = []
        for client in clients:
            self._reader.storable(client)
            rows.append((client.id, client.combiner_id, client.assigned_at, client.model_dump_json()))
        if not rows:
            return
        try:
            with self._lock:
                self._db.executemany("INSERT OR REPLACE INTO clients (id, parent, sort, doc) VALUES (?, ?, ?, ?)", rows)
                self._db.commit()
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite write to clients failed: {exc}") from exc

    def get_clients(self, client_ids: Iterable[str]) -> dict[str, ClientRecord]:
        ids = list(dict.fromkeys(client_ids))
        found: dict[str, ClientRecord] = {}
        for start in range(0, len(ids), _IN_BATCH):
            batch = ids[start : start + _IN_BATCH]
            marks = ",".join("?" * len(batch))
            try:
                with self._lock:
                    rows = self._db.execute(f"SELECT id, doc FROM clients WHERE id IN ({marks})", batch).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite read from clients failed: {exc}") from exc
            for record in self._reader.many(ClientRecord, "client", rows):
                found[record.id] = record
        return found

    def list_clients(self, *, limit: int = 1000, offset: int = 0, after: PageKey | None = None) -> list[ClientRecord]:
        return self._list("clients", ClientRecord, "client", limit=limit, offset=offset, after=after)

    def count_clients(self) -> int:
        return self._count("clients", [], [])

    def put_combiner(self, combiner: CombinerRecord) -> None:
        self._put("combiners", combiner, None, combiner.registered_at)

    def get_combiner(self, combiner_id: str) -> CombinerRecord:
        return self._get("combiners", combiner_id, CombinerRecord, "combiner")

    def list_combiners(self, *, limit: int | None = None, after: PageKey | None = None) -> list[CombinerRecord]:
        return self._list("combiners", CombinerRecord, "combiner", newest_first=False, limit=limit, after=after)

    def count_combiners(self) -> int:
        return self._count("combiners", [], [])

    def _write(self, table: str, sql: str, args: tuple) -> int:
        """Run one write and commit it (durable per ``synchronous``); the rows it changed."""
        try:
            with self._lock:
                changed = self._db.execute(sql, args).rowcount
                self._db.commit()
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite write to {table} failed: {exc}") from exc
        return changed

    def _rows(self, table: str, sql: str, args: list) -> list[tuple]:
        try:
            with self._lock:
                return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite read from {table} failed: {exc}") from exc

    def append_audit(self, event: AuditEvent) -> None:
        self._reader.storable(event)
        sql = "INSERT OR REPLACE INTO audit (id, time, action, subject, doc) VALUES (?, ?, ?, ?, ?)"
        self._write("audit", sql, (event.id, event.time, event.action, event.subject, event.model_dump_json()))

    def list_audit(
        self,
        *,
        limit: int = 100,
        before: float | None = None,
        action: str | None = None,
        subject: str | None = None,
        after: PageKey | None = None,
    ) -> list[AuditEvent]:
        check_page(limit, 0)
        check_time(before, "before")
        where, args = self._audit_filters(before, action, subject)
        keyset, keyset_args = _after("time", after, newest_first=True)
        sql = f"SELECT id, doc FROM audit {_where(where + keyset)}ORDER BY time DESC, id DESC LIMIT ?"
        rows = self._rows("audit", sql, [*args, *keyset_args, limit])
        return self._reader.many(AuditEvent, "audit event", rows)

    @staticmethod
    def _audit_filters(before: float | None, action: str | None, subject: str | None) -> tuple[list[str], list]:
        filters = {"time < ?": before, "action = ?": action, "subject = ?": subject}
        return [c for c, v in filters.items() if v is not None], [v for v in filters.values() if v is not None]

    def count_audit(self, *, action: str | None = None, subject: str | None = None) -> int:
        return self._count("audit", *self._audit_filters(None, action, subject))

    def prune_audit(self, older_than: float) -> int:
        check_time(older_than, "older_than")
        return self._write("audit", "DELETE FROM audit WHERE time < ?", (older_than,))

    def put_token(self, record: TokenRecord) -> None:
        self._reader.storable(record)
        sql = "INSERT OR REPLACE INTO tokens (id, issued_at, expires_at, revoked, doc) VALUES (?, ?, ?, ?, ?)"
        revoked = int(record.revoked_at is not None)
        self._write("tokens", sql, (record.id, record.issued_at, record.expires_at, revoked, record.model_dump_json()))

    def get_token(self, token_id: str) -> TokenRecord:
        return self._get("tokens", token_id, TokenRecord, "token")

    def list_tokens(
        self, *, include_expired: bool = False, now: float, limit: int | None = None, after: PageKey | None = None
    ) -> list[TokenRecord]:
        check_time(now, "now")
        check_page(0 if limit is None else limit, 0)
        where, args = ([], []) if include_expired else (["expires_at > ?"], [now])
        keyset, keyset_args = _after("issued_at", after, newest_first=True)
        sql = f"SELECT id, doc FROM tokens {_where(where + keyset)}ORDER BY issued_at DESC, id DESC LIMIT ?"
        rows = self._rows("tokens", sql, [*args, *keyset_args, -1 if limit is None else limit])
        return self._reader.many(TokenRecord, "token", rows)

    def count_tokens(self, *, include_expired: bool = False, now: float) -> int:
        check_time(now, "now")
        return self._count("tokens", *(([], []) if include_expired else (["expires_at > ?"], [now])))

    def revoke_token(self, token_id: str, *, by: str, at: float) -> TokenRecord:
        check_time(at, "at")
        try:
            with self._lock:  # read and write under one lock: two revocations cannot both win
                row = self._db.execute("SELECT doc FROM tokens WHERE id = ?", (token_id,)).fetchone()
                if row is None:
                    raise NotFound(f"token '{clip(token_id)}' not found")
                record = self._reader.one(TokenRecord, "token", token_id, row[0])
                if record.revoked_at is not None:
                    return record
                record = record.model_copy(update={"revoked_at": at, "revoked_by": by})
                self._reader.storable(record)
                self._db.execute(
                    "UPDATE tokens SET revoked = 1, doc = ? WHERE id = ?", (record.model_dump_json(), token_id)
                )
                self._db.commit()
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite write to tokens failed: {exc}") from exc
        return record

    def revoked_token_ids(self, now: float) -> list[str]:
        check_time(now, "now")
        rows = self._rows("tokens", "SELECT id FROM tokens WHERE revoked = 1 AND expires_at > ? ORDER BY id", [now])
        return [row[0] for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
