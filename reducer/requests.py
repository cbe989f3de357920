"""Typed request bodies and query parameters of the REST API, validated before any store is touched.

Every id matches the one id pattern, every text is one bounded line, every integer fits int64 and
every list and mapping is bounded (the limits are in docs/deploy.md); the JSON itself was checked by
:mod:`reducer.edge` before these models see it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from fedn.errors import validation_problem
from fedn.records import SessionMode
from fedn.store.base import PageKey
from reducer.edge import INT64_MAX, INT64_MIN, Id, Line
from reducer.paging import MAX_CURSOR_CHARS, decode_cursor

__all__ = [
    "MAX_CLIENTS_PER_HEARTBEAT",
    "MAX_CONFIG_ENTRIES",
    "MAX_OFFSET",
    "AssignRequest",
    "HeartbeatRequest",
    "ModelPage",
    "OffsetPage",
    "Page",
    "RegisterCombinerRequest",
    "SessionRequest",
    "TokenPage",
    "parse",
]

MAX_CLIENTS_PER_HEARTBEAT = 100_000
"""Connected clients a combiner may report in one heartbeat, at most; the registry holds each combiner
to the reducer's ``max_clients_per_combiner`` (default 10,000) below this."""
MAX_CONFIG_ENTRIES = 256
"""Entries of a session's ``config``, ``aggregator_config`` or ``strategy_config``."""
MAX_OFFSET = 10**9
"""The largest ``offset`` of a listing."""

M = TypeVar("M", bound=BaseModel)

ConfigValue = (
    StrictBool
    | Annotated[StrictInt, Field(ge=INT64_MIN, le=INT64_MAX)]
    | StrictFloat
    | Annotated[StrictStr, Field(max_length=4096)]
)
Config = Annotated[dict[Line(128, 1), ConfigValue], Field(max_length=MAX_CONFIG_ENTRIES)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SessionRequest(_Request):
    rounds: int = Field(ge=1, le=100_000, description="number of rounds (async: of global model versions; evaluate: 1)")
    aggregator: Line(256, 1) = Field("fedavg", description="rule at each combiner: fedavg, median, trimmed_mean, krum")
    aggregator_config: Config = Field(
        default_factory=dict, description='the aggregator\'s parameters, e.g. {"beta": 0.2}'
    )
    strategy: Line(256, 1) = Field(
        "fedavg", description="server optimizer: fedavg, fedavgm, fedadagrad, fedadam, fedyogi"
    )
    strategy_config: Config = Field(default_factory=dict, description='the strategy\'s parameters, e.g. {"eta": 0.01}')
    round_timeout_s: float = Field(60.0, gt=0, le=7 * 86400, description="seconds a round may take")
    min_clients: int = Field(1, ge=1, le=1_000_000, description="updates a round needs to succeed")
    fraction: float = Field(1.0, gt=0, le=1, description="share of connected clients asked to train each round")
    seed: int = Field(0, ge=0, le=INT64_MAX, description="makes client sampling reproducible")
    config: Config = Field(default_factory=dict, description="sent to every client's train()")
    model_id: Id | None = Field(
        None,
        description="seed model (evaluate: the model to evaluate); default: the newest model, uploaded or "
        "made by a round (so, after a session, its final model)",
    )
    mode: SessionMode = Field(
        SessionMode.SYNC,
        description="sync: rounds; async: FedBuff, clients train continuously (docs/strategies.md); "
        "evaluate: the selected clients evaluate model_id once, nothing trains",
    )
    evaluate_every: int = Field(
        1,
        ge=0,
        le=100_000,
        description="the selected clients evaluate the new global model every this many rounds, and after "
        "the last (0: never); async sessions evaluate their final model",
    )
    buffer_size: int = Field(10, ge=1, le=100_000, description="async: updates a combiner folds into one partial (K)")
    staleness_exponent: float = Field(
        0.5, ge=0, le=10, description="async: an update s versions old is scaled by (1+s)^-exponent"
    )
    max_staleness: int = Field(
        0, ge=0, le=1_000_000_000, description="async: drop updates older than this many versions; 0 = no limit"
    )
    compression: Line(256) = Field(
        "none",
        description="codec of the clients' updates: none, float16, int8[:block=N,stochastic=false], "
        "topk[:ratio=R] (docs/compression.md); sync mode only",
    )
    downlink_compression: Line(256) = Field(
        "none", description="codec of the global model sent to the clients: none, float16, int8; sync mode only"
    )


class RegisterCombinerRequest(_Request):
    id: Id
    name: Line(256) = ""
    address: str = Field(
        min_length=3, max_length=512, pattern=r"^[^\s\x00-\x1f\x7f-\x9f]+$", description="host:port that clients dial"
    )


class ShippedAuditEvent(_Request):
    """An audit event a combiner logged, sent on with its heartbeat (it keeps no state store)."""

    time: float = Field(ge=0, le=1e11)
    action: Line(32, 1)
    outcome: Line(16, 1)
    subject: Line(128) = ""
    role: Line(32) = ""
    peer: Line(128) = ""
    target: Line(256) = ""
    detail: Line(800) = ""


MAX_AUDIT_PER_HEARTBEAT = 100


class HeartbeatRequest(_Request):
    num_clients: int = Field(0, ge=0, le=MAX_CLIENTS_PER_HEARTBEAT)
    client_ids: list[Id] = Field(default_factory=list, max_length=MAX_CLIENTS_PER_HEARTBEAT)
    audit: list[ShippedAuditEvent] = Field(default_factory=list, max_length=MAX_AUDIT_PER_HEARTBEAT)


class AssignRequest(_Request):
    name: Line(256, 1)
    client_id: Id | None = None


class Page(_Request):
    """The query of every list route: a page of ``limit`` items after ``cursor`` (keyset paging)."""

    limit: int = Field(100, ge=1, le=1000, description="items per page")
    cursor: str | None = Field(
        None, max_length=MAX_CURSOR_CHARS, description="next_cursor of the previous page; absent for the first page"
    )

    @field_validator("cursor")
    @classmethod
    def _known_cursor(cls, value: str | None) -> str | None:
        if value is not None:
            decode_cursor(value)
        return value

    @property
    def after(self) -> PageKey | None:
        """Where the store starts this page (None: at the first item)."""
        return None if self.cursor is None else decode_cursor(self.cursor)


class OffsetPage(Page):
    """A list that also takes the older ``offset`` (items skipped; it shifts as items are added)."""

    offset: int = Field(0, ge=0, le=MAX_OFFSET, description="items to skip (prefer cursor; not with it)")

    @model_validator(mode="after")
    def _one_way(self) -> OffsetPage:
        if self.cursor is not None and self.offset:
            raise ValueError("give cursor or offset, not both")
        return self


class ModelPage(OffsetPage):
    session_id: Id | None = Field(None, description="only models of this session")


class TokenPage(Page):
    include_expired: bool = Field(False, description="list expired tokens too")


def parse(cls: type[M], data: Mapping) -> M:
    """Validate ``data`` as ``cls``; InvalidArgument lists every problem."""
    try:
        return cls.model_validate(dict(data))
    except ValidationError as exc:
        raise validation_problem(exc) from None
