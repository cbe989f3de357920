"""Typed request bodies and query parameters of the REST API, validated before any store is touched."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from fedn.errors import validation_problem
from fedn.records import SessionMode

__all__ = ["AssignRequest", "HeartbeatRequest", "Page", "RegisterCombinerRequest", "SessionRequest", "parse"]


M = TypeVar("M", bound=BaseModel)


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SessionRequest(_Request):
    rounds: int = Field(ge=1, le=100_000, description="number of rounds (async: of global model versions)")
    aggregator: str = Field("fedavg", description="rule at each combiner: fedavg, median, trimmed_mean, krum")
    aggregator_config: dict[str, StrictBool | StrictInt | StrictFloat | StrictStr] = Field(
        default_factory=dict, description='the aggregator\'s parameters, e.g. {"beta": 0.2}'
    )
    strategy: str = Field("fedavg", description="server optimizer: fedavg, fedavgm, fedadagrad, fedadam, fedyogi")
    strategy_config: dict[str, StrictBool | StrictInt | StrictFloat | StrictStr] = Field(
        default_factory=dict, description='the strategy\'s parameters, e.g. {"eta": 0.01}'
    )
    round_timeout_s: float = Field(60.0, gt=0, le=7 * 86400, description="seconds a round may take")
    min_clients: int = Field(1, ge=1, description="updates a round needs to succeed")
    fraction: float = Field(1.0, gt=0, le=1, description="share of connected clients asked to train each round")
    seed: int = Field(0, ge=0, description="makes client sampling reproducible")
    config: dict[str, StrictBool | StrictInt | StrictFloat | StrictStr] = Field(
        default_factory=dict, description="sent to every client's train()"
    )
    model_id: str | None = Field(None, description="seed model; default: the newest model")
    mode: SessionMode = Field(
        SessionMode.SYNC, description="sync: rounds; async: FedBuff, clients train continuously (docs/strategies.md)"
    )
    buffer_size: int = Field(10, ge=1, le=100_000, description="async: updates a combiner folds into one partial (K)")
    staleness_exponent: float = Field(
        0.5, ge=0, le=10, description="async: an update s versions old is scaled by (1+s)^-exponent"
    )
    max_staleness: int = Field(0, ge=0, description="async: drop updates older than this many versions; 0 = no limit")


class RegisterCombinerRequest(_Request):
    id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")
    name: str = ""
    address: str = Field(min_length=3, max_length=512, description="host:port that clients dial")


class HeartbeatRequest(_Request):
    num_clients: int = Field(0, ge=0)
    client_ids: list[str] = Field(default_factory=list)


class AssignRequest(_Request):
    name: str = Field(min_length=1, max_length=256)
    client_id: str | None = Field(None, max_length=128)


class Page(_Request):
    limit: int = Field(100, ge=1, le=1000)
    offset: int = Field(0, ge=0)
    session_id: str | None = None


def parse(cls: type[M], data: Mapping) -> M:
    """Validate ``data`` as ``cls``; InvalidArgument lists every problem."""
    try:
        return cls.model_validate(dict(data))
    except ValidationError as exc:
        raise validation_problem(exc) from None
