"""Domain records kept in the state store and served by the REST API."""

from __future__ import annotations

import time
import uuid
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field

__all__ = [
    "AuditEvent",
    "AuditOutcome",
    "ClientEvaluation",
    "ClientFailureRecord",
    "ClientRecord",
    "CombinerRecord",
    "ConfigScalar",
    "Evaluation",
    "MetricSummary",
    "ModelRecord",
    "NodeStatus",
    "Round",
    "RoundPlan",
    "RoundResult",
    "RoundStatus",
    "Session",
    "SessionMode",
    "SessionStatus",
    "TokenRecord",
    "new_id",
    "now",
]

ConfigScalar = bool | int | float | str


def new_id() -> str:
    return uuid.uuid4().hex[:16]


def now() -> float:
    return time.time()


class SessionStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    STOPPED = "stopped"  # by an admin (``stopped_by``); never resumed


class SessionMode(StrEnum):
    SYNC = "sync"  # rounds: every selected client trains on the same model, the reducer waits for all
    ASYNC = "async"  # FedBuff: clients train continuously; each combiner's buffer of K updates is merged
    EVALUATE = "evaluate"  # one round in which the selected clients evaluate ``model_id``; nothing trains


class RoundStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    STOPPED = "stopped"  # its session was stopped while it ran; nothing of it was merged


class NodeStatus(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


class Session(BaseModel):
    """A training session: a number of rounds from a seed model with one aggregator.

    In async mode a "round" is one merge of one combiner's buffer, so ``rounds`` counts global
    model versions.
    """

    id: str = Field(default_factory=new_id)
    status: SessionStatus = SessionStatus.PENDING
    rounds: int
    aggregator: str = "fedavg"
    aggregator_config: dict[str, ConfigScalar] = Field(default_factory=dict)
    strategy: str = "fedavg"  # server optimizer applied by the reducer
    strategy_config: dict[str, ConfigScalar] = Field(default_factory=dict)
    strategy_state_key: str | None = None  # model-store key of the optimizer's moments after rounds_done
    strategy_step: int = 0
    round_timeout_s: float = 60.0
    min_clients: int = 1
    fraction: float = 1.0  # share of connected clients asked to train each round
    seed: int = 0  # makes client sampling reproducible
    config: dict[str, ConfigScalar] = Field(default_factory=dict)
    mode: SessionMode = SessionMode.SYNC
    buffer_size: int = 10  # async: updates a combiner folds before it sends a partial
    staleness_exponent: float = 0.5  # async: an update s versions old is scaled by (1+s)^-exponent
    max_staleness: int = 0  # async: updates older than this many versions are dropped; 0 = no limit
    # codec texts (fedn.compression) of the clients' updates and of the global model sent to them; a
    # record from before compression existed reads "none"
    compression: str = "none"
    downlink_compression: str = "none"
    seed_model_id: str
    model_id: str  # the current global model
    rounds_done: int = 0
    # sync: the selected clients evaluate the new global model after every this many rounds, and after
    # the last (0: never); the round record carries the federated figures (``Round.evaluation``). The
    # REST API and the CLI default to 1; a record from before evaluation existed reads 0.
    evaluate_every: int = 0
    error: str | None = None
    stop_requested_by: str | None = None  # who asked to stop it; the controller ends it ``stopped``
    stopped_by: str | None = None

    def evaluates(self, index: int) -> bool:
        """Is the model made by round ``index`` evaluated on the clients? Every ``evaluate_every`` rounds
        and the last, in a sync session; only the last in an async one."""
        every = self.evaluate_every
        if every <= 0 or self.mode == SessionMode.EVALUATE:
            return False
        if self.mode == SessionMode.ASYNC:
            return index >= self.rounds
        return index % every == 0 or index >= self.rounds

    created_at: float = Field(default_factory=now)
    updated_at: float = Field(default_factory=now)


class MetricSummary(BaseModel):
    mean: float
    min: float
    max: float
    count: int
    weight: float = 0.0  # the examples behind ``mean`` (0: unknown, from a peer that did not say)


class ClientEvaluation(BaseModel):
    """One client's evaluation of a global model on its own held-out data (shown to admins only)."""

    client_id: str
    combiner_id: str = ""
    loss: float
    num_examples: float
    metrics: dict[str, float] = Field(default_factory=dict)


class Evaluation(BaseModel):
    """The federated evaluation of one model: each metric's mean over the clients that evaluated it,
    weighted by their examples, as combiners and the reducer aggregate updates (``loss`` included)."""

    model_id: str
    num_selected: int = 0
    num_clients: int = 0  # clients whose evaluation arrived
    num_examples: float = 0.0
    metrics: dict[str, MetricSummary] = Field(default_factory=dict)
    failures: list[ClientFailureRecord] = Field(default_factory=list)
    per_client: list[ClientEvaluation] = Field(default_factory=list)
    duration_s: float | None = None


class ClientFailureRecord(BaseModel):
    client_id: str
    combiner_id: str = ""
    error: str


class Round(BaseModel):
    """One round of a session, written before it is acted on."""

    id: str = Field(default_factory=new_id)
    session_id: str
    index: int  # 1-based within the session
    status: RoundStatus = RoundStatus.PENDING
    model_in: str
    model_out: str | None = None
    combiners: list[str] = Field(default_factory=list)
    num_selected: int = 0
    num_updates: int = 0
    num_rejected: int = 0
    total_weight: float = 0.0
    failures: list[ClientFailureRecord] = Field(default_factory=list)
    metrics: dict[str, MetricSummary] = Field(default_factory=dict)
    reason: str | None = None
    created_at: float = Field(default_factory=now)
    started_at: float | None = None
    finished_at: float | None = None
    duration_s: float | None = None
    # combiners that did not come back to a restarted reducer, whose partials it merged from the model store
    merged_from_store: list[str] = Field(default_factory=list)
    evaluation: Evaluation | None = None  # of model_out (of model_in in an evaluation session)
    uplink_bytes: int = 0  # payload bytes of the updates merged, as the clients sent them (compressed or raw)


class ModelRecord(BaseModel):
    """Metadata of a model blob in the model store."""

    id: str = Field(default_factory=new_id)
    key: str
    sha256: str
    size_bytes: int
    num_parameters: int
    tensors: list[dict] = Field(default_factory=list)  # TensorSpec.to_dict() entries
    session_id: str | None = None
    round_id: str | None = None
    parent_id: str | None = None
    created_at: float = Field(default_factory=now)


class ClientRecord(BaseModel):
    id: str = Field(default_factory=new_id)
    name: str
    combiner_id: str | None = None
    status: NodeStatus = NodeStatus.ONLINE
    assigned_at: float = Field(default_factory=now)
    last_seen: float = Field(default_factory=now)


class CombinerRecord(BaseModel):
    id: str
    name: str
    address: str  # host:port that clients and the reducer dial
    status: NodeStatus = NodeStatus.ONLINE
    num_clients: int = 0
    registered_at: float = Field(default_factory=now)
    last_seen: float = Field(default_factory=now)


class RoundPlan(BaseModel):
    """What the reducer asks one combiner to run."""

    round_id: str
    session_id: str
    round_index: int
    model_id: str
    aggregator: str = "fedavg"
    config: dict[str, ConfigScalar] = Field(default_factory=dict)
    timeout_s: float = 60.0
    max_clients: int = 0  # 0 = every connected client
    sample_seed: int = 0  # picks which max_clients clients, reproducibly
    aggregator_config: dict[str, ConfigScalar] = Field(default_factory=dict)
    mode: SessionMode = SessionMode.SYNC
    buffer_size: int = 0  # async: updates per partial
    model_version: int = 0  # async: the version of model_id (merges made so far)
    staleness_exponent: float = 0.5
    max_staleness: int = 0
    model_sha256: str = ""  # sha256 of model_id's stored blob; the combiner refuses another ("" = unsaid)
    compression: str = "none"  # codec text of the clients' updates (fedn.compression)
    downlink_compression: str = "none"  # codec text of the model sent to the clients


class RoundResult(BaseModel):
    """What one combiner reports when its part of a round ends."""

    round_id: str
    combiner_id: str
    partial_key: str = ""  # empty when no update arrived
    total_weight: float = 0.0
    num_selected: int = 0
    num_updates: int = 0
    num_rejected: int = 0
    failures: list[ClientFailureRecord] = Field(default_factory=list)
    metrics: dict[str, MetricSummary] = Field(default_factory=dict)
    client_ids: list[str] = Field(default_factory=list)
    evaluations: list[ClientEvaluation] = Field(default_factory=list)  # an evaluation round's, per client
    uplink_bytes: int = 0  # payload bytes of the updates folded, as sent (compressed or raw)


AuditOutcome = Literal["ok", "denied", "failed", "refused"]


class AuditEvent(BaseModel):
    """One security-relevant event (fedn.audit): who did what to which thing, and how it ended.

    ``time`` is wall-clock seconds since the epoch (the audit log keeps them strictly increasing,
    so it is also the listing cursor). No field ever holds a credential.
    """

    id: str = Field(default_factory=new_id)
    time: float
    subject: str  # the credential's subject; "" when the caller presented none
    role: str
    peer: str  # the caller's address as the server saw it
    action: str  # one of fedn.audit.ACTIONS
    target: str  # what was acted on: a session, model, combiner or token id
    outcome: AuditOutcome
    detail: str = ""


class TokenRecord(BaseModel):
    """An issued bearer token, by its ``jti``; the token itself is never stored."""

    id: str  # the JWT's jti
    subject: str
    role: str
    issued_at: float  # seconds since the epoch
    expires_at: float
    issued_by: str
    revoked_at: float | None = None
    revoked_by: str = ""
