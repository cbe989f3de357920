"""Combiner settings: flags override ``FEDN_COMBINER_*`` environment variables."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from fedn.chunking import DEFAULT_CHUNK_BYTES

__all__ = ["CombinerSettings"]


class CombinerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FEDN_COMBINER_")

    name: str = Field("combiner", description="combiner id, unique in the federation")
    host: str = Field("127.0.0.1", description="address to bind")
    port: int = Field(12080, ge=0, le=65535, description="port to bind; 0 picks a free one")
    advertise_host: str | None = Field(None, description="host clients and the reducer dial [default: --host]")
    advertise_port: int | None = Field(None, ge=1, le=65535, description="port they dial [default: bound port]")
    reducer: str = Field("http://127.0.0.1:8092", description="reducer base URL")
    models: SecretStr = Field(
        SecretStr("file://.fedn/models"),
        description="model store URL, shared with the reducer (may hold credentials)",
        json_schema_extra={"secret": True},
    )
    heartbeat_interval_s: float = Field(2.0, gt=0, description="seconds between heartbeats (reducer and clients)")
    max_heartbeats_per_s: float = Field(
        500.0,
        gt=0,
        description="heartbeats to clients a second at most: with more than --heartbeat-interval-s times this "
        "many clients, each gets them further apart, and each heartbeat tells the client the interval",
    )
    max_update_bytes: int = Field(1 << 30, gt=0, description="largest update payload accepted, in bytes")
    max_concurrent_uploads: int = Field(8, ge=1, description="uploads staged at once; bounds memory")
    max_concurrent_downloads: int = Field(16, ge=1, description="model downloads streamed at once; bounds memory")
    max_download_bytes: int = Field(
        16 << 20,
        gt=0,
        description="model bytes all downloads in flight may hold; fewer downloads of a large model run at once",
    )
    max_staged_bytes: int = Field(
        64 << 20, gt=0, description="bytes of updates staged at once (always at least one update); bounds memory"
    )
    model_cache_bytes: int = Field(
        16 << 20,
        ge=0,
        description="global models up to this size are held in memory and served from there; larger ones are "
        "streamed from the model store to each client, so the combiner holds no copy",
    )
    spool_over_bytes: int = Field(
        16 << 20,
        ge=0,
        description="updates larger than this are staged in a temporary file while they are checked and folded, "
        "not in memory",
    )
    spool_dir: str | None = Field(
        None,
        description="directory of those temporary files [default: the system's, $TMPDIR or /tmp]; put it on disk "
        "if /tmp is a RAM disk (tmpfs)",
    )
    upload_grant_timeout_s: float = Field(
        30.0, gt=0, description="seconds a client granted an upload slot has to start using it before it passes on"
    )
    store_retry_grace_s: float = Field(
        7.5,
        ge=0,
        description="seconds past a round's deadline the combiner keeps retrying the model store (storing its "
        "partial) through an outage; keep it below the reducer's --rpc-grace-s (default 15) so the round's "
        "answer reaches the reducer before it stops waiting",
    )
    straggler_backoff_rounds: int = Field(
        1,
        ge=0,
        description="sync rounds a client that missed a round's deadline sits out; doubles with each further miss, "
        "forgiven on a delivered update; 0 selects it again at once",
    )
    straggler_backoff_max_rounds: int = Field(8, ge=0, description="the longest back-off of a straggler, in rounds")
    http2_bdp_probe: bool = Field(
        False,
        description="let HTTP/2 windows grow with bandwidth-delay: faster for few clients with large models over "
        "slow links, but every waiting stream may then buffer megabytes, so memory grows with clients",
    )
    malloc_arenas: int = Field(
        1,
        ge=0,
        description="heap arenas the combiner's threads share (glibc); one lets memory freed by any thread serve "
        "the next allocation, so peak memory stays near what the combiner holds; 0 leaves the C library's "
        "default (eight per core, or MALLOC_ARENA_MAX)",
    )
    max_num_examples: float = Field(
        1e9,
        gt=0,
        description="largest num_examples (aggregation weight) an update may claim; a larger one is refused, so "
        "one client cannot dominate FedAvg by claiming a huge weight, or overflow the float64 weighted sum",
    )
    min_transfer_bytes_per_s: int = Field(
        64 * 1024,
        gt=0,
        description="slowest rate a download or upload may keep: one of n bytes is cut off after "
        "--transfer-grace-s + n / this, so a client that stops reading or trickles cannot hold a slot forever",
    )
    transfer_grace_s: float = Field(30.0, ge=0, description="seconds every download and upload gets on top of that")
    max_clients: int = Field(
        10_000,
        ge=1,
        description="task streams (connected clients) this combiner holds; more are refused (RESOURCE_EXHAUSTED) "
        "and ask the reducer again; bounds memory, heartbeats and the candidates of a round",
    )
    max_concurrent_rpcs: int | None = Field(
        None,
        ge=1,
        description="calls in flight the gRPC server accepts; more are refused (RESOURCE_EXHAUSTED) "
        "[default: 2 * --max-clients + 64: each client holds its task stream plus a short call]",
    )
    max_connection_idle_s: float = Field(
        300.0, ge=0, description="close a connection with no call open for this long (0: never); frees idle peers"
    )
    max_connection_age_s: float = Field(
        0.0,
        ge=0,
        description="close every connection after this long (0: never, the default): it also ends long-lived task "
        "streams, so clients reconnect; set it to spread clients again behind a load balancer",
    )
    chunk_bytes: int = Field(
        DEFAULT_CHUNK_BYTES,
        ge=1024,
        description="size of model chunks sent to clients; each one in flight is copied a few times on its way",
    )
    metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="serve Prometheus metrics at http(s)://--host:PORT/metrics (0 picks a free port; HTTPS with "
        "the combiner's certificate and an admin or viewer token when those are on) [default: off]",
    )
    # security (docs/security.md)
    tls_cert: str | None = Field(None, description="this combiner's certificate (PEM): serve gRPC over TLS")
    tls_key: str | None = Field(None, description="the certificate's private key (PEM)")
    client_ca: str | None = Field(
        None, description="CA certificate(s) clients must present a certificate from (mutual TLS)"
    )
    ca_file: str | None = Field(None, description="CA an https:// reducer's certificate must chain to")
    token_public_key: str | None = Field(
        None,
        description="the federation's token public key (token-signing.pub): every call must bring a valid "
        "token with the role its method needs, and a client acts only as its token's subject",
    )
    token: SecretStr | None = Field(
        None,
        description="this combiner's token (role combiner, subject = --name), sent to the reducer",
        json_schema_extra={"secret": True},
    )
    insecure: bool = Field(
        False, description="allow a non-loopback --host without TLS and tokens (a warning is logged)"
    )
