"""A typed client of the reducer's REST API, used by the CLI, combiners and clients."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Generator, Sequence
from typing import Any

import httpx

from fedn import errors
from fedn.records import AuditEvent, ClientRecord, CombinerRecord, ModelRecord, Round, Session

__all__ = ["DEFAULT_REDUCER_URL", "Assignment", "ReducerAPI"]

DEFAULT_REDUCER_URL = "http://127.0.0.1:8092"


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

    # health
    def health(self) -> dict:
        return self._json("GET", "/health")

    # combiners
    def register_combiner(self, combiner_id: str, address: str) -> CombinerRecord:
        body = {"id": combiner_id, "name": combiner_id, "address": address}
        return CombinerRecord.model_validate(self._json("POST", "/combiners", json=body))

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

    def list_combiners(self) -> list[CombinerRecord]:
        return [CombinerRecord.model_validate(c) for c in self._json("GET", "/combiners")["items"]]

    # clients
    def assign_client(self, name: str, client_id: str | None = None) -> Assignment:
        body: dict[str, Any] = {"name": name}
        if client_id:
            body["client_id"] = client_id
        return Assignment(self._json("POST", "/clients/assign", json=body))

    def list_clients(self) -> list[ClientRecord]:
        return [ClientRecord.model_validate(c) for c in self._json("GET", "/clients")["items"]]

    # models
    def upload_model(self, blob: bytes) -> ModelRecord:
        headers = {"Content-Type": "application/octet-stream"}
        return ModelRecord.model_validate(self._json("POST", "/models", content=blob, headers=headers))

    def get_model(self, model_id: str) -> ModelRecord:
        return ModelRecord.model_validate(self._json("GET", f"/models/{model_id}"))

    def list_models(self, session_id: str | None = None, limit: int = 100) -> list[ModelRecord]:
        params: dict[str, Any] = {"limit": limit}
        if session_id:
            params["session_id"] = session_id
        return [ModelRecord.model_validate(m) for m in self._json("GET", "/models", params=params)["items"]]

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
        return Session.model_validate(self._json("POST", "/sessions", json=params))

    def get_session(self, session_id: str) -> Session:
        return Session.model_validate(self._json("GET", f"/sessions/{session_id}"))

    def list_sessions(self) -> list[Session]:
        return [Session.model_validate(s) for s in self._json("GET", "/sessions")["items"]]

    def list_rounds(self, session_id: str) -> list[Round]:
        return [Round.model_validate(r) for r in self._json("GET", f"/sessions/{session_id}/rounds")["items"]]

    def get_round(self, round_id: str) -> Round:
        return Round.model_validate(self._json("GET", f"/rounds/{round_id}"))

    # tokens (admin)
    def issue_token(self, role: str, subject: str, ttl_s: float) -> dict:
        """``{"token", "id", "subject", "role", "expires_at", ...}``: the token is shown only here."""
        return self._json("POST", "/tokens", json={"role": role, "subject": subject, "ttl_s": ttl_s})

    def list_tokens(self, include_expired: bool = False) -> list[dict]:
        return self._json("GET", "/tokens", params={"include_expired": str(include_expired).lower()})["items"]

    def revoke_token(self, token_id: str) -> dict:
        return self._json("POST", f"/tokens/{token_id}/revoke")

    # audit log (admin)
    def list_audit(
        self,
        *,
        limit: int = 100,
        before: float | None = None,
        action: str | None = None,
        subject: str | None = None,
    ) -> tuple[list[AuditEvent], float | None]:
        """One page of audit events, newest first, and the ``before`` of the next page (None at the end)."""
        filters = {"limit": limit, "before": before, "action": action, "subject": subject}
        body = self._json("GET", "/audit", params={k: v for k, v in filters.items() if v is not None})
        return [AuditEvent.model_validate(e) for e in body["items"]], body.get("next_before")
