"""State on MongoDB (pymongo): one collection per record kind, documents a person can read in mongosh."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TypeVar

import pymongo
from bson.errors import InvalidDocument
from pydantic import BaseModel
from pymongo.errors import InvalidURI, PyMongoError
from pymongo.write_concern import WriteConcern

from fedn.errors import InvalidArgument, NotFound, StoreError
from fedn.records import AuditEvent, ClientRecord, CombinerRecord, ModelRecord, Round, Session, TokenRecord
from fedn.store.base import PageKey, StateStore
from fedn.store.redact import redact_url
from fedn.store.validation import RecordReader, check_page, check_time, clip

__all__ = ["MongoStateStore"]

logger = logging.getLogger(__name__)

T = TypeVar("T", bound=BaseModel)

# Defaults for what the URL does not say: acknowledged by a majority and journaled, so a write that
# returned survives kill -9 of the server; a write that cannot reach a majority fails after 10 s
# (WTimeoutError, a StoreError) instead of blocking the caller for good.
DEFAULT_W = "majority"
DEFAULT_JOURNAL = True
DEFAULT_WTIMEOUT_MS = 10_000

# collection -> indexes; the sort keys of the list_* queries
_INDEXES = {
    "sessions": [[("created_at", pymongo.DESCENDING)]],
    "rounds": [[("session_id", pymongo.ASCENDING), ("index", pymongo.ASCENDING)]],
    "models": [[("created_at", pymongo.DESCENDING)], [("session_id", pymongo.ASCENDING), ("created_at", -1)]],
    "clients": [[("assigned_at", pymongo.DESCENDING)]],
    "combiners": [[("registered_at", pymongo.ASCENDING)]],
    "audit": [[("time", pymongo.DESCENDING)], [("action", 1), ("time", -1)], [("subject", 1), ("time", -1)]],
    "tokens": [[("issued_at", pymongo.DESCENDING)], [("revoked_at", 1), ("expires_at", 1)]],
}


def _after(query: dict, field: str, after: PageKey | None, direction: int) -> dict:
    """``query`` narrowed to the records after ``after`` in ``(field, _id)`` order (keyset paging)."""
    if after is None:
        return query
    check_time(after.sort, "cursor")
    op = "$lt" if direction == pymongo.DESCENDING else "$gt"
    keyset = {"$or": [{field: {op: after.sort}}, {field: after.sort, "_id": {op: after.id}}]}
    return {"$and": [query, keyset]} if query else keyset


class MongoStateStore(StateStore):
    """``mongodb://user:pass@host:port/db?authSource=admin``; the database defaults to ``fedn``.

    Documents are the records' JSON with ``_id`` = record id. Every write is an upsert by id, so it
    is safe to retry after a dropped connection. Writes use the URL's ``w``, ``journal`` and
    ``wtimeoutMS`` options; each one the URL leaves out defaults to ``w=majority``, ``journal=true``
    (none with ``w=0``) and ``wtimeoutMS=10000``.
    """

    def __init__(self, url: str, *, timeout_s: float = 5.0) -> None:
        self._url = redact_url(url)  # by pattern: a multi-host or replica-set URI is not a URL urllib parses
        try:
            self._client: pymongo.MongoClient = pymongo.MongoClient(
                url,
                serverSelectionTimeoutMS=int(timeout_s * 1000),
                connectTimeoutMS=int(timeout_s * 1000),
                retryWrites=True,
                tz_aware=False,
            )
            database = self._client.get_default_database(
                default="fedn", write_concern=_durable(self._client.write_concern)
            )
            database.command("ping")
            for collection, indexes in _INDEXES.items():
                for keys in indexes:
                    database[collection].create_index(keys)
        except (InvalidURI, ValueError) as exc:  # a malformed URL: pymongo's messages quote no part of it
            raise StoreError(
                f"invalid MongoDB URL {self._url}: {_first_line(exc)} (percent-encode a user name or password "
                "holding : / ? # @ %)"
            ) from exc
        except PyMongoError as exc:
            raise StoreError(f"cannot use MongoDB at {self._url}: {_first_line(exc)}") from exc
        self._db = database
        self._reader = RecordReader(f"MongoDB {self._url}")
        logger.info(
            "state store: MongoDB %s, database %s, write concern %s", self._url, database.name, self.write_concern
        )

    @property
    def write_concern(self) -> WriteConcern:
        """The write concern every write of this store uses."""
        return self._db.write_concern

    def _put(self, collection: str, record: BaseModel) -> None:
        self._reader.storable(record)
        doc = record.model_dump(mode="json")
        doc["_id"] = doc["id"]
        try:
            self._db[collection].replace_one({"_id": doc["_id"]}, doc, upsert=True)
        except PyMongoError as exc:
            raise StoreError(f"MongoDB write to {collection} failed: {_first_line(exc)}") from exc
        except (InvalidDocument, OverflowError) as exc:  # permanent: retrying cannot help
            raise InvalidArgument(f"cannot store {collection} {clip(record.id)}: {_first_line(exc)}") from exc

    def _get(self, collection: str, record_id: str, cls: type[T], what: str) -> T:
        try:
            doc = self._db[collection].find_one({"_id": record_id})
        except PyMongoError as exc:
            raise StoreError(f"MongoDB read from {collection} failed: {_first_line(exc)}") from exc
        if doc is None:
            raise NotFound(f"{what} '{clip(record_id)}' not found")
        doc.pop("_id", None)
        return self._reader.one(cls, what, record_id, doc)

    def _list(
        self,
        collection: str,
        cls: type[T],
        what: str,
        query: dict,
        sort: list,
        limit: int | None = None,
        offset: int = 0,
        after: PageKey | None = None,
    ) -> list[T]:
        """``limit=None`` lists all; 0 lists nothing, as in SQL (MongoDB's own limit(0) means all)."""
        check_page(0 if limit is None else limit, offset)
        if limit == 0:
            return []
        query = _after(query, sort[0][0], after, sort[0][1])
        try:
            cursor = self._db[collection].find(query).sort([*sort, ("_id", sort[0][1])]).skip(offset).limit(limit or 0)
            docs = list(cursor)
        except PyMongoError as exc:
            raise StoreError(f"MongoDB read from {collection} failed: {_first_line(exc)}") from exc
        return self._reader.many(cls, what, ((doc.pop("_id", None), doc) for doc in docs))

    def _count(self, collection: str, query: dict) -> int:
        try:
            return self._db[collection].count_documents(query)
        except PyMongoError as exc:
            raise StoreError(f"MongoDB count of {collection} failed: {_first_line(exc)}") from exc

    def put_session(self, session: Session) -> None:
        self._put("sessions", session)

    def get_session(self, session_id: str) -> Session:
        return self._get("sessions", session_id, Session, "session")

    def list_sessions(self, *, limit: int = 100, offset: int = 0, after: PageKey | None = None) -> list[Session]:
        sort = [("created_at", pymongo.DESCENDING)]
        return self._list("sessions", Session, "session", {}, sort, limit, offset, after)

    def count_sessions(self) -> int:
        return self._count("sessions", {})

    def put_round(self, round_: Round) -> None:
        self._put("rounds", round_)

    def get_round(self, round_id: str) -> Round:
        return self._get("rounds", round_id, Round, "round")

    def list_rounds(self, session_id: str, *, limit: int | None = None, after: PageKey | None = None) -> list[Round]:
        sort = [("index", pymongo.ASCENDING)]
        return self._list("rounds", Round, "round", {"session_id": session_id}, sort, limit, after=after)

    def count_rounds(self, session_id: str) -> int:
        return self._count("rounds", {"session_id": session_id})

    def put_model(self, model: ModelRecord) -> None:
        self._put("models", model)

    def get_model(self, model_id: str) -> ModelRecord:
        return self._get("models", model_id, ModelRecord, "model")

    def list_models(
        self, *, session_id: str | None = None, limit: int = 100, offset: int = 0, after: PageKey | None = None
    ) -> list[ModelRecord]:
        query = {} if session_id is None else {"session_id": session_id}
        sort = [("created_at", pymongo.DESCENDING)]
        return self._list("models", ModelRecord, "model", query, sort, limit, offset, after)

    def count_models(self, *, session_id: str | None = None) -> int:
        return self._count("models", {} if session_id is None else {"session_id": session_id})

    def put_client(self, client: ClientRecord) -> None:
        self._put("clients", client)

    def put_clients(self, clients: Iterable[ClientRecord]) -> None:
        """One bulk write, however many clients."""
        ops = []
        for client in clients:
            self._reader.storable(client)
            doc = client.model_dump(mode="json")
            doc["_id"] = doc["id"]
            ops.append(pymongo.ReplaceOne({"_id": doc["_id"]}, doc, upsert=True))
        if not ops:
            return
        try:
            self._db["clients"].bulk_write(ops, ordered=False)
        except PyMongoError as exc:
            raise StoreError(f"MongoDB write to clients failed: {_first_line(exc)}") from exc
        except (InvalidDocument, OverflowError) as exc:
            raise InvalidArgument(f"cannot store clients: {_first_line(exc)}") from exc

    def get_clients(self, client_ids: Iterable[str]) -> dict[str, ClientRecord]:
        ids = list(dict.fromkeys(client_ids))
        found: dict[str, ClientRecord] = {}
        for start in range(0, len(ids), 1000):
            try:
                docs = list(self._db["clients"].find({"_id": {"$in": ids[start : start + 1000]}}))
            except PyMongoError as exc:
                raise StoreError(f"MongoDB read from clients failed: {_first_line(exc)}") from exc
            for doc in docs:
                record_id = doc.pop("_id")
                found[record_id] = self._reader.one(ClientRecord, "client", record_id, doc)
        return found

    def get_client(self, client_id: str) -> ClientRecord:
        return self._get("clients", client_id, ClientRecord, "client")

    def list_clients(self, *, limit: int = 1000, offset: int = 0, after: PageKey | None = None) -> list[ClientRecord]:
        sort = [("assigned_at", pymongo.DESCENDING)]
        return self._list("clients", ClientRecord, "client", {}, sort, limit, offset, after)

    def count_clients(self) -> int:
        return self._count("clients", {})

    def put_combiner(self, combiner: CombinerRecord) -> None:
        self._put("combiners", combiner)

    def get_combiner(self, combiner_id: str) -> CombinerRecord:
        return self._get("combiners", combiner_id, CombinerRecord, "combiner")

    def list_combiners(self, *, limit: int | None = None, after: PageKey | None = None) -> list[CombinerRecord]:
        sort = [("registered_at", pymongo.ASCENDING)]
        return self._list("combiners", CombinerRecord, "combiner", {}, sort, limit, after=after)

    def count_combiners(self) -> int:
        return self._count("combiners", {})

    def append_audit(self, event: AuditEvent) -> None:
        self._put("audit", event)

    def list_audit(
        self,
        *,
        limit: int = 100,
        before: float | None = None,
        action: str | None = None,
        subject: str | None = None,
        after: PageKey | None = None,
    ) -> list[AuditEvent]:
        check_time(before, "before")
        query: dict = {} if before is None else {"time": {"$lt": before}}
        query.update({k: v for k, v in (("action", action), ("subject", subject)) if v is not None})
        sort = [("time", pymongo.DESCENDING)]
        return self._list("audit", AuditEvent, "audit event", query, sort, limit, after=after)

    def count_audit(self, *, action: str | None = None, subject: str | None = None) -> int:
        return self._count("audit", {k: v for k, v in (("action", action), ("subject", subject)) if v is not None})

    def prune_audit(self, older_than: float) -> int:
        check_time(older_than, "older_than")
        try:
            return self._db["audit"].delete_many({"time": {"$lt": older_than}}).deleted_count
        except PyMongoError as exc:
            raise StoreError(f"MongoDB delete from audit failed: {_first_line(exc)}") from exc

    def put_token(self, record: TokenRecord) -> None:
        self._put("tokens", record)

    def get_token(self, token_id: str) -> TokenRecord:
        return self._get("tokens", token_id, TokenRecord, "token")

    def list_tokens(
        self, *, include_expired: bool = False, now: float, limit: int | None = None, after: PageKey | None = None
    ) -> list[TokenRecord]:
        check_time(now, "now")
        query = {} if include_expired else {"expires_at": {"$gt": now}}
        sort = [("issued_at", pymongo.DESCENDING)]
        return self._list("tokens", TokenRecord, "token", query, sort, limit, after=after)

    def count_tokens(self, *, include_expired: bool = False, now: float) -> int:
        check_time(now, "now")
        return self._count("tokens", {} if include_expired else {"expires_at": {"$gt": now}})

    def revoke_token(self, token_id: str, *, by: str, at: float) -> TokenRecord:
        check_time(at, "at")
        try:  # one atomic update: of two racing revocations only the first is kept
            self._db["tokens"].update_one(
                {"_id": token_id, "revoked_at": None}, {"$set": {"revoked_at": at, "revoked_by": by}}
            )
        except PyMongoError as exc:
            raise StoreError(f"MongoDB write to tokens failed: {_first_line(exc)}") from exc
        return self.get_token(token_id)

    def revoked_token_ids(self, now: float) -> list[str]:
        check_time(now, "now")
        try:
            docs = (
                self._db["tokens"]
                .find({"revoked_at": {"$ne": None}, "expires_at": {"$gt": now}}, {"_id": 1})
                .sort("_id", pymongo.ASCENDING)
            )
            return [str(doc["_id"]) for doc in docs]
        except PyMongoError as exc:
            raise StoreError(f"MongoDB read from tokens failed: {_first_line(exc)}") from exc

    def close(self) -> None:
        self._client.close()


def _durable(given: WriteConcern) -> WriteConcern:
    """``given`` (the URL's options) with our defaults for what it leaves out."""
    options = given.document
    w = options.get("w", DEFAULT_W)
    journal = options.get("j", None if w == 0 else DEFAULT_JOURNAL)
    return WriteConcern(w=w, j=journal, wtimeout=options.get("wtimeout", DEFAULT_WTIMEOUT_MS))


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
