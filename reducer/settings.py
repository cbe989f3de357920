"""Reducer settings: flags override ``FEDN_REDUCER_*`` environment variables."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ReducerSettings"]


class ReducerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FEDN_REDUCER_")

    host: str = Field("127.0.0.1", description="address to bind the REST API")
    port: int = Field(8092, ge=0, le=65535, description="port of the REST API; 0 picks a free one")
    state: SecretStr = Field(
        SecretStr("sqlite:///.fedn/state.db"),
        description="state store URL (may hold credentials)",
        json_schema_extra={"secret": True},
    )
    models: SecretStr = Field(
        SecretStr("file://.fedn/models"),
        description="model store URL, shared with the combiners (may hold credentials)",
        json_schema_extra={"secret": True},
    )
    combiner_timeout_s: float = Field(10.0, gt=0, description="a combiner silent this long is marked offline")
    rpc_grace_s: float = Field(15.0, ge=0, description="seconds a RunRound call may exceed the round timeout")
    resume_wait_s: float = Field(
        30.0,
        ge=0,
        description="after a restart, seconds to wait for the combiners of the round that was running "
        "(at most the round's timeout)",
    )
    rebalance: bool = Field(
        True,
        description="move idle clients off a combiner that holds more than its share to one that joined or "
        "came back (each heartbeat is answered with how many clients to shed)",
    )
    rebalance_interval_s: float = Field(
        5.0, gt=0, description="a combiner is told to shed clients at most once per this many seconds"
    )
    max_session_errors: int = Field(
        5, ge=1, description="a session whose run fails this many times in a row with an unexpected error is failed"
    )
    round_retries: int = Field(
        2,
        ge=0,
        le=100,
        description="a sync round short of min_clients updates is run again this many times before the session "
        "fails (a combiner that died takes its clients' updates with it)",
    )
    gc_interval_s: float = Field(
        600.0, ge=0, description="seconds between garbage collections of the model store; 0 = never"
    )
    gc_grace_s: float = Field(
        3600.0, ge=0, description="a model blob with no record, or a partial with no round, is removed once this old"
    )
    max_model_bytes: int = Field(1 << 30, gt=0, description="largest model upload accepted, in bytes")
    threads: int = Field(16, ge=1, description="REST API worker threads")
    # what the reducer accepts from combiners and API callers (docs/security.md)
    max_num_examples: float = Field(
        1e9,
        gt=0,
        le=1e15,
        description="largest num_examples one update may claim (as the combiners' --max-num-examples): a "
        "combiner's result whose total weight exceeds its updates times this is refused, not merged",
    )
    max_clients_per_combiner: int = Field(
        10_000,
        ge=1,
        le=100_000,
        description="clients a combiner may list in one heartbeat or result; a longer list is refused (400)",
    )
    max_combiners: int = Field(
        1000,
        ge=1,
        le=100_000,
        description="combiners live at once (each one a thread in a round): registering one more is refused (409)",
    )
    max_pending_sessions: int = Field(
        100, ge=1, le=100_000, description="sessions pending or running at once; creating one more is refused (409)"
    )
    # REST server: TLS and what one client may hold of it (docs/security.md)
    tls_cert: str | None = Field(None, description="the REST API's certificate (PEM): serve HTTPS")
    tls_key: str | None = Field(None, description="the certificate's private key (PEM)")
    client_ca: str | None = Field(
        None, description="CA certificate(s) REST clients must present a certificate from (mutual TLS)"
    )
    max_connections: int = Field(
        1000, ge=1, description="REST connections open at once; more are answered 503 (bounds sockets and memory)"
    )
    idle_timeout_s: float = Field(
        30.0, gt=0, description="a REST connection with no request under way is closed after this many seconds"
    )
    read_timeout_s: float = Field(
        30.0,
        gt=0,
        description="a request's head must arrive within this many seconds of its first byte, no wait for more of "
        "its body may exceed it, and a client that reads none of an answer for this long is cut off",
    )
    min_body_rate: int = Field(
        16 << 10,
        ge=0,
        description="bytes/s a request body must average once read_timeout_s has passed (cuts trickling uploads)",
    )
    max_json_bytes: int = Field(
        1 << 20, gt=0, description="largest request body on every route but model upload, refused before reading"
    )
    max_uploads: int = Field(
        4, ge=1, description="model uploads (bodies over max_json_bytes) received at once; more are answered 503"
    )
    # security (docs/security.md)
    token_signing_key: str | None = Field(
        None,
        description="the federation's token-signing private key (token-signing.key from `fedn token keygen`): "
        "every API call but /health needs a token with the role of its route, and combiners are called with "
        "a short-lived token of role reducer",
    )
    ca_file: str | None = Field(None, description="CA that combiners' certificates must chain to (their gRPC TLS)")
    insecure: bool = Field(
        False, description="allow a non-loopback --host without TLS and tokens (a warning is logged)"
    )
    audit_retention_days: float = Field(
        90.0, gt=0, le=36600, description="audit events older than this are removed from the state store"
    )
    max_event_streams: int = Field(
        200, ge=1, le=100_000, description="dashboard event streams open at once; one more is answered 503"
    )
