"""What a simulation runs: the spec, client heterogeneity profiles, and per-client constructor arguments."""

from __future__ import annotations

import inspect
import os
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from fedn.compression import downlink_payload_bytes, parse_compression
from fedn.errors import InvalidArgument, validation_problem
from fedn.partition import MAX_DIRICHLET_PARTITIONS, PARTITIONERS
from fedn.records import ConfigScalar, SessionMode
from fedn.sampling import allocate_sample, sample_seed, sample_size, select_clients

__all__ = [
    "ClientFactory",
    "Heterogeneity",
    "ProfileColumn",
    "SimulationSpec",
    "auto_workers",
    "client_profiles",
    "parse_spec",
    "round_sample",
]

_INT64_MAX = 2**63 - 1
MAX_ROUND_SAMPLE = 10_000_000  # clients a round trains (each is a task the driver holds for the round)
MAX_COMBINER_GROUPS = 1024  # the driver holds a float64 model per group


class Heterogeneity(BaseModel):
    """Availability and speed profiles, drawn per client from the seed.

    A *flaky* client (``dropout_share`` of them) misses each round it is sampled for with probability
    ``dropout``. A *slow* client (``slow_share`` of them) takes ``slowdown`` times as long. Time is
    modelled, not measured, so results stay reproducible: a client's round takes
    ``example_time_s * num_examples * epochs * slowdown`` seconds, and with ``deadline_s`` set, updates
    that would arrive later are discarded as stragglers.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # an infinite time is no time to model

    dropout: float = Field(0.0, ge=0, le=1, description="chance that a flaky client misses a round")
    dropout_share: float = Field(1.0, ge=0, le=1, description="share of clients that are flaky")
    slow_share: float = Field(0.0, ge=0, le=1, description="share of clients that are slow")
    slowdown: float = Field(10.0, ge=1, description="how many times slower a slow client is")
    example_time_s: float = Field(1e-3, gt=0, description="modelled seconds per example and epoch")
    deadline_s: float | None = Field(None, gt=0, description="modelled round deadline; later updates are dropped")
    task_time_s: float | None = Field(
        None,
        gt=0,
        description="modelled seconds a task takes a normal-speed client, whatever its data; async mode's clock "
        "(default 1 s there); unset, a sync round's time follows from the examples",
    )


class SimulationSpec(BaseModel):
    """One simulated federation: the client class and its data split, the strategy, and the run's size."""

    model_config = ConfigDict(extra="forbid")

    client: str = Field(description="the client class, module:Class (the same one `fedn client start` runs)")
    client_args: dict[str, Any] = Field(default_factory=dict)
    eval_args: dict[str, Any] | None = Field(
        default_factory=lambda: {"split": "test"},
        description="central evaluation: extra arguments of one evaluating client instance in the driver "
        "(its loss and metrics are the rows' loss, accuracy, ...); None: no central evaluation",
    )
    federated_eval: bool = Field(
        True,
        description="federated evaluation: the round's clients evaluate the new global model on their own data, "
        "aggregated as a deployment aggregates it (the rows' eval_loss, eval_accuracy, ...)",
    )
    # ids and seeds are int64: a range of more ids has no len() to sample from, and round seeds are taken
    # modulo 2**63 (fedn.sampling.sample_seed), so a larger seed would sample as a smaller one
    clients: int = Field(ge=1, le=_INT64_MAX)
    combiners: int = Field(1, ge=1, le=MAX_COMBINER_GROUPS)
    rounds: int = Field(ge=1)
    fraction: float = Field(1.0, gt=0, le=1)
    min_clients: int = Field(1, ge=1)
    seed: int = Field(0, ge=0, le=_INT64_MAX)
    workers: int = Field(1, ge=1)
    partition: str | None = Field(None, description="iid, dirichlet, shard or quantity; passed to the client")
    alpha: float = Field(
        0.5, gt=0, allow_inf_nan=False, description="Dirichlet concentration for dirichlet and quantity"
    )
    config: dict[str, ConfigScalar] = Field(default_factory=dict, description="round config for every train call")
    strategy: str = "fedavg"
    strategy_config: dict[str, Any] = Field(default_factory=dict)
    aggregator: str = "fedavg"
    aggregator_config: dict[str, Any] = Field(default_factory=dict)
    heterogeneity: Heterogeneity = Field(default_factory=Heterogeneity)
    mode: SessionMode = SessionMode.SYNC
    buffer_size: int = Field(10, ge=1, description="async: updates per group buffer")
    staleness_exponent: float = Field(0.5, ge=0, le=10, description="async: scale (1+s)^-exponent")
    max_staleness: int = Field(0, ge=0, description="async: drop updates older than this; 0 = no limit")
    eval_every: int = Field(
        1,
        ge=1,
        description="evaluate every this many rounds (and the last); the central evaluation also every this "
        "many async versions, the federated one only the final version (as a deployment)",
    )
    compression: str = Field(
        "none", description="update (uplink) compression, as fedn.compression spells it: none, float16, int8, topk"
    )
    downlink_compression: str = Field("none", description="global model (downlink) compression: none, float16, int8")

    @field_validator("compression", "downlink_compression", mode="before")
    @classmethod
    def _known_compression(cls, value: object, info: ValidationInfo) -> str:
        try:
            c = parse_compression(value)  # type: ignore[arg-type]
            if info.field_name == "downlink_compression":
                downlink_payload_bytes([], c)  # refuses topk
        except InvalidArgument as exc:
            raise ValueError(exc.message) from None
        return c.text()

    @field_validator("partition")
    @classmethod
    def _known_partitioner(cls, value: str | None) -> str | None:
        if value is not None and value not in PARTITIONERS:
            raise ValueError(f"unknown partitioner {value!r}; known: {', '.join(PARTITIONERS)}")
        return value

    @model_validator(mode="after")
    def _sizes(self) -> SimulationSpec:
        if self.combiners > self.clients:
            raise ValueError(f"{self.combiners} combiners need at least as many clients, not {self.clients}")
        if self.min_clients > self.clients:
            raise ValueError(f"min_clients {self.min_clients} is more than the {self.clients} clients")
        sampled = self.clients if self.fraction >= 1.0 else sample_size(self.clients, self.fraction, self.min_clients)
        if sampled > MAX_ROUND_SAMPLE:  # the driver lists a round's clients: it would run out of memory first
            raise ValueError(
                f"clients: {self.clients} at fraction {self.fraction:g}: a round would train {sampled} clients, "
                f"more than the {MAX_ROUND_SAMPLE} the simulator trains in one; lower the fraction"
            )
        if self.partition == "dirichlet" and self.clients > MAX_DIRICHLET_PARTITIONS:
            raise ValueError(
                f"--partition dirichlet draws all partitions at once, at most {MAX_DIRICHLET_PARTITIONS}, "
                f"not {self.clients}; use shard or quantity, which build a client's partition when it is sampled"
            )
        if self.mode == SessionMode.ASYNC and self.heterogeneity.deadline_s is not None:
            raise ValueError("async mode has no rounds to put a deadline on; use max_staleness")
        return self


def parse_spec(**fields: Any) -> SimulationSpec:
    """A validated spec, or InvalidArgument naming every bad field."""
    try:
        return SimulationSpec(**fields)
    except ValidationError as exc:
        raise validation_problem(exc, "invalid simulation") from None


def auto_workers() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _accepted_kwargs(cls: type) -> set[str] | None:
    """Keyword names ``cls`` takes, or None if it takes ``**kwargs``."""
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


class ClientFactory:
    """Builds simulated client ``index`` with the user's arguments plus its partition, where the class takes one.

    ``partition`` and ``num_partitions`` are set as ``fedn local`` sets them; ``partitioner`` and
    ``alpha`` come from ``--partition``/``--alpha``; ``seed`` from ``--seed`` unless given. The
    signature is read once here, not per client. InvalidArgument if ``--partition`` cannot reach the class.
    """

    def __init__(self, cls: type, spec: SimulationSpec) -> None:
        accepted = _accepted_kwargs(cls)
        if spec.partition is not None and accepted is not None and "partitioner" not in accepted:
            raise InvalidArgument(
                f"{spec.client} takes no 'partitioner' argument, so --partition {spec.partition} cannot reach it; "
                "drop --partition or add the argument (see docs/simulation.md)"
            )
        self.cls = cls
        self.base = dict(spec.client_args)
        if accepted is None or "seed" in accepted:
            self.base.setdefault("seed", spec.seed)
        per_client: dict[str, Any] = {"num_partitions": spec.clients}
        if spec.partition is not None:
            per_client |= {"partitioner": spec.partition, "alpha": spec.alpha}
        self.base.update({k: v for k, v in per_client.items() if accepted is None or k in accepted})
        self.takes_partition = accepted is None or "partition" in accepted

    def kwargs(self, index: int) -> dict[str, Any]:
        return {**self.base, "partition": index} if self.takes_partition else self.base

    def __call__(self, index: int) -> Any:
        return self.cls(**self.kwargs(index))


class ProfileColumn:
    """One heterogeneity profile over all clients, one bit each: ``value`` for the clients drawn into the
    share, ``default`` for the others. Indexing gives client ``i``'s float; a million clients take 125 KB."""

    def __init__(self, chosen: np.ndarray | None, clients: int, value: float, default: float) -> None:
        self.clients, self.value, self.default = clients, float(value), float(default)
        self._bits: np.ndarray | None = None
        if chosen is not None and len(chosen) and value != default:
            mask = np.zeros(clients, dtype=bool)
            mask[chosen] = True
            self._bits = np.packbits(mask)

    def __len__(self) -> int:
        return self.clients

    def __getitem__(self, client: int) -> float:
        if not 0 <= client < self.clients:
            raise IndexError(f"client {client} is outside 0..{self.clients - 1}")
        if self._bits is not None and self._bits[client >> 3] & (0x80 >> (client & 7)):
            return self.value
        return self.default

    def any(self) -> bool:
        """Does some client have ``value`` (a flaky or slow client exists)?"""
        return self._bits is not None


def client_profiles(spec: SimulationSpec) -> tuple[ProfileColumn, ProfileColumn]:
    """``(slowdown, dropout probability)`` per client, drawn once from the seed.

    The draws are a seeded permutation of the clients per profile (transient: 8 bytes a client, once),
    kept as one bit a client; a profile nobody has skips its draw, except the first, which later
    draws follow in the seed's stream.
    """
    h, n = spec.heterogeneity, spec.clients
    rng = np.random.default_rng([spec.seed, 0x51, 1])
    slow_count, flaky_count = round(h.slow_share * n), round(h.dropout_share * n)
    flaky_matter = flaky_count > 0 and h.dropout > 0
    slow_matter = slow_count > 0 and h.slowdown != 1.0
    slow = rng.permutation(n)[:slow_count] if slow_matter or flaky_matter else None
    slowdown = ProfileColumn(slow, n, h.slowdown, 1.0)
    del slow
    flaky = rng.permutation(n)[:flaky_count] if flaky_matter else None
    return slowdown, ProfileColumn(flaky, n, h.dropout, 0.0)


def round_sample(spec: SimulationSpec, round_index: int) -> list[list[int]]:
    """The clients each combiner group asks in round ``round_index``, as a deployment picks them: the
    reducer splits ``fraction`` of the clients over the groups, each group draws its share with the
    round's seed. Client ``i`` belongs to group ``i mod combiners``. A group with no share asks none, as
    the reducer leaves its combiner out (``select_clients`` reads a count of 0 as every client)."""
    members = [range(g, spec.clients, spec.combiners) for g in range(spec.combiners)]  # never listed
    shares = {g: len(m) for g, m in enumerate(members)}
    if spec.fraction < 1.0:
        shares = allocate_sample(shares, sample_size(spec.clients, spec.fraction, spec.min_clients))
    seed = sample_seed(spec.seed, round_index)
    return [select_clients(members[g], shares[g], seed) if shares[g] else [] for g in range(spec.combiners)]
