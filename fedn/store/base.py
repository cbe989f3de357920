"""The two store interfaces. Backends translate driver errors into StoreError / NotFound."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from fedn.errors import NotFound
from fedn.records import AuditEvent, ClientRecord, CombinerRecord, ModelRecord, Round, Session, TokenRecord

__all__ = ["ModelStore", "PageKey", "StateStore", "StoredObject", "page_key"]


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One blob in a model store: its key, its size in bytes, and when it was last written
    (``modified_at``, seconds since the epoch, UTC)."""

    key: str
    size: int
    modified_at: float


@dataclass(frozen=True, slots=True)
class PageKey:
    """Where a keyset page ended: the last record's sort value and id (see :func:`page_key`).

    A list given ``after=key`` starts with the record that follows ``key`` in the list's order, so
    records added while a caller pages are neither skipped nor repeated (an offset would shift)."""

    sort: float
    id: str


# The order every backend lists each kind in, ties broken by id in the same direction.
_SORT_FIELDS: dict[type, str] = {
    Session: "created_at",  # newest first
    Round: "index",  # in index order
    ModelRecord: "created_at",  # newest first
    ClientRecord: "assigned_at",  # newest first
    CombinerRecord: "registered_at",  # oldest first
    AuditEvent: "time",  # newest first
    TokenRecord: "issued_at",  # newest first
}


Listed = Session | Round | ModelRecord | ClientRecord | CombinerRecord | AuditEvent | TokenRecord


def page_key(record: Listed) -> PageKey:
    """The key of ``record`` in its kind's list order: ``after=`` of the next page."""
    return PageKey(getattr(record, _SORT_FIELDS[type(record)]), record.id)


class StateStore(ABC):
    """Sessions, rounds, models, clients, combiners, audit events and issued tokens.

    ``put_*`` inserts or replaces by id (safe to retry). ``get_*`` raises
    NotFound. ``list_*`` returns newest first unless stated otherwise; ``after`` (a :class:`PageKey`)
    starts a list after that record (keyset paging), ``limit=None`` lists all. ``count_*`` counts
    what the matching ``list_*`` would list with no limit and no ``after``.
    """

    @abstractmethod
    def put_session(self, session: Session) -> None: ...
    @abstractmethod
    def get_session(self, session_id: str) -> Session: ...
    @abstractmethod
    def list_sessions(self, *, limit: int = 100, offset: int = 0, after: PageKey | None = None) -> list[Session]: ...
    @abstractmethod
    def count_sessions(self) -> int: ...

    @abstractmethod
    def put_round(self, round_: Round) -> None: ...
    @abstractmethod
    def get_round(self, round_id: str) -> Round: ...
    @abstractmethod
    def list_rounds(self, session_id: str, *, limit: int | None = None, after: PageKey | None = None) -> list[Round]:
        """Rounds of one session in index order (all of them unless ``limit``)."""

    @abstractmethod
    def count_rounds(self, session_id: str) -> int: ...

    @abstractmethod
    def put_model(self, model: ModelRecord) -> None: ...
    @abstractmethod
    def get_model(self, model_id: str) -> ModelRecord: ...
    @abstractmethod
    def list_models(
        self, *, session_id: str | None = None, limit: int = 100, offset: int = 0, after: PageKey | None = None
    ) -> list[ModelRecord]: ...
    @abstractmethod
    def count_models(self, *, session_id: str | None = None) -> int: ...

    @abstractmethod
    def put_client(self, client: ClientRecord) -> None: ...
    @abstractmethod
    def get_client(self, client_id: str) -> ClientRecord: ...

    def put_clients(self, clients: Iterable[ClientRecord]) -> None:
        """Several clients in one write where the backend can (a heartbeat brings thousands)."""
        for client in clients:
            self.put_client(client)

    def get_clients(self, client_ids: Iterable[str]) -> dict[str, ClientRecord]:
        """The clients of ``client_ids`` that exist, by id, in as few reads as the backend can."""
        found = {}
        for client_id in client_ids:
            try:
                found[client_id] = self.get_client(client_id)
            except NotFound:
                continue
        return found

    @abstractmethod
    def list_clients(
        self, *, limit: int = 1000, offset: int = 0, after: PageKey | None = None
    ) -> list[ClientRecord]: ...
    @abstractmethod
    def count_clients(self) -> int: ...

    @abstractmethod
    def put_combiner(self, combiner: CombinerRecord) -> None: ...
    @abstractmethod
    def get_combiner(self, combiner_id: str) -> CombinerRecord: ...
    @abstractmethod
    def list_combiners(self, *, limit: int | None = None, after: PageKey | None = None) -> list[CombinerRecord]:
        """Oldest registered first (all of them unless ``limit``)."""

    @abstractmethod
    def count_combiners(self) -> int: ...

    # The audit log: appended by fedn.audit.AuditLog, read by admins, pruned by age.
    @abstractmethod
    def append_audit(self, event: AuditEvent) -> None:
        """Store ``event`` (by id, so a retried write never duplicates it)."""

    @abstractmethod
    def list_audit(
        self,
        *,
        limit: int = 100,
        before: float | None = None,
        action: str | None = None,
        subject: str | None = None,
        after: PageKey | None = None,
    ) -> list[AuditEvent]:
        """Newest first (ties by id); ``before`` is an exclusive time cursor: the next page starts
        before the last event's ``time``."""

    @abstractmethod
    def count_audit(self, *, action: str | None = None, subject: str | None = None) -> int: ...

    @abstractmethod
    def prune_audit(self, older_than: float) -> int:
        """Delete events with ``time < older_than``; how many were deleted."""

    # Issued tokens by their jti; the token itself is never stored.
    @abstractmethod
    def put_token(self, record: TokenRecord) -> None: ...
    @abstractmethod
    def get_token(self, token_id: str) -> TokenRecord: ...
    @abstractmethod
    def list_tokens(
        self, *, include_expired: bool = False, now: float, limit: int | None = None, after: PageKey | None = None
    ) -> list[TokenRecord]:
        """Newest issued first; without ``include_expired`` only tokens with ``expires_at > now``."""

    @abstractmethod
    def count_tokens(self, *, include_expired: bool = False, now: float) -> int: ...

    @abstractmethod
    def revoke_token(self, token_id: str, *, by: str, at: float) -> TokenRecord:
        """The token marked revoked at ``at`` by ``by``; revoking again keeps the first revocation."""

    @abstractmethod
    def revoked_token_ids(self, now: float) -> list[str]:
        """Ids of revoked tokens that have not expired yet, sorted: the deny list every combiner gets
        with each heartbeat, small because an expired token needs no revocation."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class ModelStore(ABC):
    """Blobs by key. Writes are atomic: a reader sees a whole blob or NotFound."""

    @abstractmethod
    def put(self, key: str, data: bytes | Iterable[bytes]) -> int:
        """Store ``data`` (bytes or an iterable of chunks) under ``key``; returns its size in bytes."""

    @abstractmethod
    def get(self, key: str) -> bytes: ...

    @abstractmethod
    def iter_chunks(self, key: str, chunk_bytes: int) -> Iterator[bytes]: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def list_keys(self, prefix: str = "") -> Iterator[StoredObject]:
        """Every stored blob whose key starts with ``prefix`` (a plain string prefix, not a folder),
        sorted by key. Writes still in progress are not listed. A prefix no key can have lists nothing."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
