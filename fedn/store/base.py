"""The two store interfaces. Backends translate driver errors into StoreError / NotFound."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from fedn.records import AuditEvent, ClientRecord, CombinerRecord, ModelRecord, Round, Session, TokenRecord

__all__ = ["ModelStore", "StateStore", "StoredObject"]


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One blob in a model store: its key, its size in bytes, and when it was last written
    (``modified_at``, seconds since the epoch, UTC)."""

    key: str
    size: int
    modified_at: float


class StateStore(ABC):
    """Sessions, rounds, models, clients, combiners, audit events and issued tokens.

    ``put_*`` inserts or replaces by id (safe to retry). ``get_*`` raises
    NotFound. ``list_*`` returns newest first unless stated otherwise.
    """

    @abstractmethod
    def put_session(self, session: Session) -> None: ...
    @abstractmethod
    def get_session(self, session_id: str) -> Session: ...
    @abstractmethod
    def list_sessions(self, *, limit: int = 100, offset: int = 0) -> list[Session]: ...

    @abstractmethod
    def put_round(self, round_: Round) -> None: ...
    @abstractmethod
    def get_round(self, round_id: str) -> Round: ...
    @abstractmethod
    def list_rounds(self, session_id: str) -> list[Round]:
        """Rounds of one session in index order."""

    @abstractmethod
    def put_model(self, model: ModelRecord) -> None: ...
    @abstractmethod
    def get_model(self, model_id: str) -> ModelRecord: ...
    @abstractmethod
    def list_models(self, *, session_id: str | None = None, limit: int = 100, offset: int = 0) -> list[ModelRecord]: ...

    @abstractmethod
    def put_client(self, client: ClientRecord) -> None: ...
    @abstractmethod
    def get_client(self, client_id: str) -> ClientRecord: ...
    @abstractmethod
    def list_clients(self, *, limit: int = 1000, offset: int = 0) -> list[ClientRecord]: ...

    @abstractmethod
    def put_combiner(self, combiner: CombinerRecord) -> None: ...
    @abstractmethod
    def get_combiner(self, combiner_id: str) -> CombinerRecord: ...
    @abstractmethod
    def list_combiners(self) -> list[CombinerRecord]: ...

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
    ) -> list[AuditEvent]:
        """Newest first (ties by id); ``before`` is an exclusive time cursor: the next page starts
        before the last event's ``time``."""

    @abstractmethod
    def prune_audit(self, older_than: float) -> int:
        """Delete events with ``time < older_than``; how many were deleted."""

    # Issued tokens by their jti; the token itself is never stored.
    @abstractmethod
    def put_token(self, record: TokenRecord) -> None: ...
    @abstractmethod
    def get_token(self, token_id: str) -> TokenRecord: ...
    @abstractmethod
    def list_tokens(self, *, include_expired: bool = False, now: float) -> list[TokenRecord]:
        """Newest issued first; without ``include_expired`` only tokens with ``expires_at > now``."""

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
