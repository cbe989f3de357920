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
    max_model_bytes: int = Field(1 << 30, gt=0, description="largest model upload accepted, in bytes")
    threads: int = Field(16, ge=1, description="REST API worker threads")
