"""A typed client of the reducer's REST API, used by the CLI, combiners and clients."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel

from fedn import errors
from fedn._http import httpx
from fedn.records import AuditEvent, ClientRecord, CombinerRecord, ModelRecord, Round, Session, TokenRecord
from fedn.rest_records import epoch_seconds, record_from_rest

__all__ = ["DEFAULT_REDUCER_URL", "MAX_PAGE", "Assignment", "Page", "ReducerAPI"]

DEFAULT_REDUCER_URL = "http://127.0.0.1:8092"
MAX_PAGE = 1000
"""The most items the reducer returns per request (``limit``)."""

R = TypeVar("R", bound=BaseModel)


class Page(list[R]):
    """Records of a list route, in its order, as a list; ``total`` matching records on the reducer and
    ``next_cursor`` to continue after the last one (None: nothing more)."""

    def __init__(self, items: Sequence[R] = (), total: int = 0, next_cursor: str | None = None) -> None:
        super().__init__(items)
        self.total = total
        self.next_cursor = next_cursor

    @property
    def is_complete(self) -> bool:
        """Whether nothing more matched than these records."""
        return self.next_cursor is None


class Assignment(dict):
    """``{"client_id", "combiner_id", "combiner_address"}`` as returned by the reducer."""


class _BearerAuth(httpx.Auth):
    """Sends the current token with every request (a function gives it when it is renewed)."""

    def __init__(self, token: str | Callable[[], str]) -> None:
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self._token() if callable(self._token) else self._token
        if token:
            request.headers["Authorization"] = f"Bearer {token}"
        yield request


class ReducerAPI:
    """Calls ``{base_url}/api/v1``; raises FednError subclasses carrying the server's message.

    ``token`` is sent as a bearer token; ``tls`` (a :class:`fedn.tls.TLSFiles`) gives the CA that an
    ``https://`` reducer's certificate must chain to, and a client certificate for mutual TLS.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 30.0,
        token: str | Callable[[], str] | None = None,
        tls: Any = None,
    ) -> None:
        self._base = base_url.rstrip("/") + "/api/v1"
        verify: Any = True
        if tls is not None and (tls.ca_file or tls.cert_file):
            from fedn.tls import client_ssl_context

            verify = client_ssl_context(tls.ca_file, tls.cert_file, tls.key_file)
        auth = _BearerAuth(token) if token else None
        self._http = httpx.Client(timeout=timeout_s, auth=auth, verify=verify)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ReducerAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        url = self._base + path
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise errors.Unavailable(f"reducer at {self._base} is unreachable: {exc}") from exc
        if response.status_code >= 400:
            try:
                body = response.json()
                message = body.get("detail") or body.get("error") or response.text
            except ValueError:
                message = response.text[:500]
            raise errors.error_from_http(response.status_code, f"{method} {path}: {message}")
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    def iter_pages(
        self, path: str, cls: type[R], *, limit: int | None = None, cursor: str | None = None, **params: Any
    ) -> Iterator[Page[R]]:
        """Pages of the list route ``path`` (e.g. ``/sessions``) from ``cursor`` on, following each
        page's ``next_cursor`` until the end or until ``limit`` records (None: all) came. Each request
        asks for what is still wanted, so the last page's ``next_cursor`` continues exactly after it."""
        if limit is not None and limit < 1:
            raise errors.InvalidArgument(f"limit must be at least 1, not {limit}")
        query = {k: v for k, v in params.items() if v is not None}
        received, seen = 0, {cursor}
        while True:
            size = MAX_PAGE if limit is None else min(MAX_PAGE, limit - received)
            body = self._json("GET", path, params={**query, "limit": size, **({"cursor": cursor} if cursor else {})})
            cursor = body.get("next_cursor")
            page = Page([record_from_rest(cls, item) for item in body["items"]], int(body.get("total", 0)), cursor)
            received += len(page)
            yield page
            # stops on a page that brings nothing or a cursor seen before: never loops on a bad answer
            if cursor is None or not page or cursor in seen or (limit is not None and received >= limit):
                return
            seen.add(cursor)

    def _collect(self, pages: Iterator[Page[R]]) -> Page[R]:
        out: Page[R] = Page()
        for page in pages:
            out.extend(page)
            out.total, out.next_cursor = page.total, page.next_cursor
        return out

    # health
    def health(self) -> dict:
        return self._json("GET", "/health")

    # combiners
    def register_combiner(self, combiner_id: str, address: str) -> CombinerRecord:
        body = {"id": combiner_id, "name": combiner_id, "address": address}
        return record_from_rest(CombinerRecord, self._json("POST", "/combiners", json=body))

    def combiner_heartbeat(self, combiner_id: str, client_ids: list[str], audit: Sequence[AuditEvent] = ()) -> dict:
        """The reducer's answer: ``status``, ``num_clients``, ``shed``, how many idle clients to let go
        so they move to a less loaded combiner (0 from a reducer that does not rebalance, or an older one),
        and ``revoked``, the ids of revoked tokens the combiner must refuse."""
        body: dict[str, Any] = {"num_clients": len(client_ids), "client_ids": client_ids}
        if audit:  # the combiner's audit events, stored by the reducer (a combiner keeps no state)
            body["audit"] = [e.model_dump(mode="json", exclude={"id"}) for e in audit]
        answer = self._json("PUT", f"/combiners/{combiner_id}/heartbeat", json=body)
        answer = answer if isinstance(answer, dict) else {}
        shed = answer.get("shed", 0)
        answer["shed"] = shed if isinstance(shed, int) and not isinstance(shed, bool) and shed > 0 else 0
        revoked = answer.get("revoked")
        answer["revoked"] = [r for r in revoked if isinstance(r, str)] if isinstance(revoked, list) else []
        return answer

    def list_combiners(self, *, limit: int | None = None, cursor: str | None = None) -> Page[CombinerRecord]:
        """Combiners, oldest registered first; all of them unless ``limit``."""
        return self._collect(self.iter_pages("/combiners", CombinerRecord, limit=limit, cursor=cursor))

    # clients
    def assign_client(self, name: str, client_id: str | None = None) -> Assignment:
        body: dict[str, Any] = {"name": name}
        if client_id:
            body["client_id"] = client_id
        return Assignment(self._json("POST", "/clients/assign", json=body))

    def list_clients(self, *, limit: int | None = None, cursor: str | None = None) -> Page[ClientRecord]:
        """Clients, newest assigned first; all of them unless ``limit``."""
        return self._collect(self.iter_pages("/clients", ClientRecord, limit=limit, cursor=cursor))

    # models
    def upload_model(self, blob: bytes) -> ModelRecord:
        headers = {"Content-Type": "application/octet-stream"}
        return record_from_rest(ModelRecord, self._json("POST", "/models", content=blob, headers=headers))

    def get_model(self, model_id: str) -> ModelRecord:
        return record_from_rest(ModelRecord, self._json("GET", f"/models/{model_id}"))

    def list_models(
        self, session_id: str | None = None, limit: int | None = 100, cursor: str | None = None
    ) -> Page[ModelRecord]:
        """Models, newest first (of one session if ``session_id``); ``limit=None`` lists all."""
        pages = self.iter_pages("/models", ModelRecord, limit=limit, cursor=cursor, session_id=session_id or None)
        return self._collect(pages)

    def download_model(self, model_id: str) -> bytes:
        """The model's safetensors file, checked against the sha256 of its record (ChecksumMismatch)."""
        record = self.get_model(model_id)
        blob = self._request("GET", f"/models/{model_id}/download").content
        digest = hashlib.sha256(blob).hexdigest()
        if digest != record.sha256:
            raise errors.ChecksumMismatch(
                f"model {model_id}: the download has sha256 {digest}, its record says {record.sha256}; refused"
            )
        return blob

    # sessions and rounds
    def start_session(self, **params: Any) -> Session:
        return record_from_rest(Session, self._json("POST", "/sessions", json=params))

    def get_session(self, session_id: str) -> Session:
        return record_from_rest(Session, self._json("GET", f"/sessions/{session_id}"))

    def stop_session(self, session_id: str) -> Session:
        """Stop a pending or running session (admin); it ends ``stopped`` (see ``Session.stopped_by``)."""
        return record_from_rest(Session, self._json("POST", f"/sessions/{session_id}/stop"))

    def list_sessions(self, *, limit: int | None = None, cursor: str | None = None) -> Page[Session]:
        """Sessions, newest first; all of them unless ``limit``."""
        return self._collect(self.iter_pages("/sessions", Session, limit=limit, cursor=cursor))

    def list_rounds(self, session_id: str, *, limit: int | None = None, cursor: str | None = None) -> Page[Round]:
        """Rounds of a session in index order; all of them unless ``limit``."""
        return self._collect(self.iter_pages(f"/sessions/{session_id}/rounds", Round, limit=limit, cursor=cursor))

    def get_round(self, round_id: str) -> Round:
        return record_from_rest(Round, self._json("GET", f"/rounds/{round_id}"))

    # tokens (admin)
    def issue_token(self, role: str, subject: str, ttl_s: float) -> dict:
        """``{"token", "id", "subject", "role", "expires_at", ...}``: the token is shown only here;
        ``expires_at`` in seconds since the epoch, as every time this client returns (REST sends ISO 8601)."""
        answer = self._json("POST", "/tokens", json={"role": role, "subject": subject, "ttl_s": ttl_s})
        if "expires_at" in answer:
            answer["expires_at"] = epoch_seconds(answer["expires_at"])
        return answer

    def list_tokens(
        self, include_expired: bool = False, *, limit: int | None = None, cursor: str | None = None
    ) -> Page[TokenRecord]:
        """Issued tokens (never the tokens themselves), newest first; all of them unless ``limit``."""
        flag = str(include_expired).lower()
        return self._collect(self.iter_pages("/tokens", TokenRecord, limit=limit, cursor=cursor, include_expired=flag))

    def revoke_token(self, token_id: str) -> dict:
        return self._json("POST", f"/tokens/{token_id}/revoke")

    # audit log (admin)
    def list_audit(
        self,
        *,
        limit: int | None = 100,
        cursor: str | None = None,
        before: float | None = None,
        action: str | None = None,
        subject: str | None = None,
    ) -> Page[AuditEvent]:
        """Audit events, newest first (``before``: only older than this epoch time); ``limit=None``: all."""
        filters = {"before": before, "action": action, "subject": subject}
        return self._collect(self.iter_pages("/audit", AuditEvent, limit=limit, cursor=cursor, **filters))
