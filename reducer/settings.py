"""Reducer settings: flags override ``FEDN_REDUCER_*`` environment variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ReducerSettings"]


class ReducerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FEDN_REDUCER_")

    host: str = Field("127.0.0.1", description="address to bind the REST API")
    port: int = Field(8092, ge=0, le=65535, description="port of the REST API; 0 picks a free one")
    state: str = Field("sqlite:///.fedn/state.db", description="state store URL")
    models: str = Field("file://.fedn/models", description="model store URL, shared with the combiners")
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
