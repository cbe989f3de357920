"""State on MongoDB (pymongo): one collection per record kind, documents a person can read in mongosh."""

from __future__ import annotations

import logging
from typing import TypeVar

import pymongo
from pydantic import BaseModel
from pymongo.errors import PyMongoError

from fedn.errors import NotFound, StoreError
from fedn.records import ClientRecord, CombinerRecord, ModelRecord, Round, Session
from fedn.store.base import StateStore
from fedn.store.redact import redact_url

__all__ = ["MongoStateStore"]

logger = logging.getLogger(__name__)

T = TypeVar("T", bound=BaseModel)

# collection -> indexes; the sort keys of the list_* queries
_INDEXES = {
    "sessions": [[("created_at", pymongo.DESCENDING)]],
    "rounds": [[("session_id", pymongo.ASCENDING), ("index", pymongo.ASCENDING)]],
    "models": [[("created_at", pymongo.DESCENDING)], [("session_id", pymongo.ASCENDING), ("created_at", -1)]],
    "clients": [[("assigned_at", pymongo.DESCENDING)]],
    "combiners": [[("registered_at", pymongo.ASCENDING)]],
}


class MongoStateStore(StateStore):
    """``mongodb://user:pass@host:port/db?authSource=admin``; the database defaults to ``fedn``.

    Documents are the records' JSON with ``_id`` = record id. Every write is an upsert by id, so it
    is safe to retry after a dropped connection.
    """

    def __init__(self, url: str, *, timeout_s: float = 5.0) -> None:
        self._url = redact_url(url)
        try:
            self._client: pymongo.MongoClient = pymongo.MongoClient(
                url,
                serverSelectionTimeoutMS=int(timeout_s * 1000),
                connectTimeoutMS=int(timeout_s * 1000),
                retryWrites=True,
                tz_aware=False,
            )
            database = self._client.get_default_database(default="fedn")
            database.command("ping")
            for collection, indexes in _INDEXES.items():
                for keys in indexes:
                    database[collection].create_index(keys)
        except PyMongoError as exc:
            raise StoreError(f"cannot use MongoDB at {self._url}: {_first_line(exc)}") from exc
        except ValueError as exc:  # a malformed URL
            raise StoreError(f"invalid MongoDB URL {self._url}: {exc}") from exc
        self._db = database
        logger.info("state store: MongoDB %s, database %s", self._url, database.name)

    def _put(self, collection: str, record: BaseModel) -> None:
        doc = record.model_dump(mode="json")
        doc["_id"] = doc["id"]
        try:
            self._db[collection].replace_one({"_id": doc["_id"]}, doc, upsert=True)
        except PyMongoError as exc:
            raise StoreError(f"MongoDB write to {collection} failed: {_first_line(exc)}") from exc

    def _get(self, collection: str, record_id: str, cls: type[T], what: str) -> T:
        try:
            doc = self._db[collection].find_one({"_id": record_id})
        except PyMongoError as exc:
            raise StoreError(f"MongoDB read from {collection} failed: {_first_line(exc)}") from exc
        if doc is None:
            raise NotFound(f"{what} {record_id!r} not found")
        doc.pop("_id", None)
        return cls.model_validate(doc)

    def _list(self, collection: str, cls: type[T], query: dict, sort: list, limit: int = 0, offset: int = 0) -> list[T]:
        try:
            cursor = self._db[collection].find(query).sort([*sort, ("_id", sort[0][1])]).skip(offset).limit(limit)
            docs = list(cursor)
        except PyMongoError as exc:
            raise StoreError(f"MongoDB read from {collection} failed: {_first_line(exc)}") from exc
        for doc in docs:
            doc.pop("_id", None)
        return [cls.model_validate(doc) for doc in docs]

    def put_session(self, session: Session) -> None:
        self._put("sessions", session)

    def get_session(self, session_id: str) -> Session:
        return self._get("sessions", session_id, Session, "session")

    def list_sessions(self, *, limit: int = 100, offset: int = 0) -> list[Session]:
        return self._list("sessions", Session, {}, [("created_at", pymongo.DESCENDING)], limit, offset)

    def put_round(self, round_: Round) -> None:
        self._put("rounds", round_)

    def get_round(self, round_id: str) -> Round:
        return self._get("rounds", round_id, Round, "round")

    def list_rounds(self, session_id: str) -> list[Round]:
        return self._list("rounds", Round, {"session_id": session_id}, [("index", pymongo.ASCENDING)])

    def put_model(self, model: ModelRecord) -> None:
        self._put("models", model)

    def get_model(self, model_id: str) -> ModelRecord:
        return self._get("models", model_id, ModelRecord, "model")

    def list_models(self, *, session_id: str | None = None, limit: int = 100, offset: int = 0) -> list[ModelRecord]:
        query = {} if session_id is None else {"session_id": session_id}
        return self._list("models", ModelRecord, query, [("created_at", pymongo.DESCENDING)], limit, offset)

    def put_client(self, client: ClientRecord) -> None:
        self._put("clients", client)

    def get_client(self, client_id: str) -> ClientRecord:
        return self._get("clients", client_id, ClientRecord, "client")

    def list_clients(self, *, limit: int = 1000, offset: int = 0) -> list[ClientRecord]:
        return self._list("clients", ClientRecord, {}, [("assigned_at", pymongo.DESCENDING)], limit, offset)

    def put_combiner(self, combiner: CombinerRecord) -> None:
        self._put("combiners", combiner)

    def get_combiner(self, combiner_id: str) -> CombinerRecord:
        return self._get("combiners", combiner_id, CombinerRecord, "combiner")

    def list_combiners(self) -> list[CombinerRecord]:
        return self._list("combiners", CombinerRecord, {}, [("registered_at", pymongo.ASCENDING)])

    def close(self) -> None:
        self._client.close()


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
