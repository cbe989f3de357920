"""Server optimizers applied by the reducer to the merged pseudo-gradient (Reddi et al., ICLR 2021).

With ``x`` the global model and ``merged`` the weighted mean of the clients' models, the
pseudo-gradient is ``Δ = merged - x``, the example-weighted mean of the clients' deltas (Algorithm 2
writes the plain mean ``1/|S|·Σ Δ_i``; FedAvg's weighting is what the combiners compute). Then:

    m ← β1·m + (1 - β1)·Δ
    v ← v + Δ²                               (FedAdagrad)
    v ← β2·v + (1 - β2)·Δ²                   (FedAdam)
    v ← v - (1 - β2)·Δ²·sign(v - Δ²)         (FedYogi)
    x ← x + η·m / (√v + τ)

with ``m`` starting at 0 and ``v`` at τ². FedAdam and FedYogi accept ``bias_correction`` (off by
default, as in the paper), which makes the step Kingma & Ba's Adam: ``m`` and ``v`` start at 0 and

    x ← x + η·m̂ / (√v̂ + τ),   m̂ = m / (1 - β1^t),   v̂ = v / (1 - β2^t)

with ``t`` the step count. Yogi's ``v`` is not a moving average, but it starts at 0 and moves by at
most ``(1 - β2)·Δ²`` a step, so the same divisor removes its start-up bias (as TensorFlow Addons'
Yogi does). FedAdagrad has neither ``beta2`` nor ``bias_correction`` and refuses them.
FedAvgM is server momentum ``m ← β·m + Δ; x ← x + η·m``; FedAvg is ``x ← merged``. Only
floating-point tensors are optimized; others take the merged value. State (``m``, ``v``, step count)
is explicit so the reducer can store it with the session.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from functools import lru_cache
from importlib.metadata import entry_points

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedn.codec import NamedArrays
from fedn.errors import InvalidArgument

__all__ = [
    "SERVER_OPTIMIZERS",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedProx",
    "FedYogi",
    "ServerOptimizer",
    "make_server_optimizer",
]


logger = logging.getLogger(__name__)


class _Config(BaseModel):
    # each parameter is bounded (DESIGN §9): eta=1e308 or tau=1e-300 would make the first step inf
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ServerOptimizer:
    """Base: holds its state in ``moments`` (name -> arrays) and ``step_count``."""

    name = "fedavg"
    Config: type[_Config] = _Config

    def __init__(self, config: _Config | None = None) -> None:
        self.config = config or self.Config()
        self.step_count = 0
        self.moments: dict[str, NamedArrays] = {}

    def step(self, global_: Mapping[str, np.ndarray], merged: Mapping[str, np.ndarray]) -> NamedArrays:
        """The next global model (float64 for float tensors) from the current one and the merged mean."""
        self.step_count += 1
        out: NamedArrays = {}
        plain = type(self)._update is ServerOptimizer._update  # x + (merged - x) is merged: skip the copies
        for name, m in merged.items():
            x = np.asarray(global_[name])
            if x.dtype.kind != "f" or plain:
                out[name] = np.asarray(m, dtype=np.float64) if plain and x.dtype.kind == "f" else np.asarray(m)
                continue
            x64 = x.astype(np.float64)
            out[name] = self._update(name, x64, np.asarray(m, dtype=np.float64) - x64)
        return out

    def _update(self, name: str, x: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return x + delta

    def client_config(self) -> dict[str, float]:
        """Round-config entries this strategy sends to every client's ``train`` (e.g. ``lr``, ``mu``)."""
        eta_l = getattr(self.config, "eta_l", None)
        return {} if eta_l is None else {"lr": eta_l}

    def _moment(self, kind: str, name: str, like: np.ndarray, initial: float) -> np.ndarray:
        store = self.moments.setdefault(kind, {})
        if name not in store:
            store[name] = np.full(like.shape, initial, dtype=np.float64)
        return store[name]

    # persistence: moments flattened to "kind/name" keys, as a safetensors blob would hold them
    def state_arrays(self) -> NamedArrays:
        return {f"{kind}/{name}": a for kind, arrays in self.moments.items() for name, a in arrays.items()}

    def load_state(self, arrays: Mapping[str, np.ndarray], step_count: int) -> None:
        self.moments = {}
        for key, a in arrays.items():
            kind, _, name = key.partition("/")
            self.moments.setdefault(kind, {})[name] = np.array(a, dtype=np.float64)
        self.step_count = step_count


class FedAvg(ServerOptimizer):
    name = "fedavg"


class FedProx(ServerOptimizer):
    """FedAvg at the server; clients add ``mu/2·||w - w_global||²`` to their loss (Li et al., MLSys 2020).

    ``mu`` reaches clients as the round-config key ``mu``; a client that ignores it still trains.
    """

    name = "fedprox"

    class Config(_Config):
        mu: float = Field(0.01, ge=0, le=100, description="proximal term weight μ, in [0, 100]")

    def client_config(self) -> dict[str, float]:
        return {"mu": self.config.mu}


class FedAvgM(ServerOptimizer):
    name = "fedavgm"

    class Config(_Config):
        eta: float = Field(1.0, gt=0, le=10, description="server learning rate η, in (0, 10]")
        momentum: float = Field(0.9, ge=0, lt=1, description="server momentum β, in [0, 1)")

    def _update(self, name, x, delta):
        m = self._moment("m", name, x, 0.0)
        m *= self.config.momentum
        m += delta
        return x + self.config.eta * m


class _AdaptiveConfig(_Config):
    eta: float = Field(0.1, gt=0, le=10, description="server learning rate η, in (0, 10]")
    eta_l: float | None = Field(
        None, gt=0, le=10, description="client learning rate η_l, sent to clients as lr, in (0, 10]"
    )
    beta1: float = Field(0.9, ge=0, lt=1, description="first-moment decay β1, in [0, 1)")
    tau: float = Field(
        1e-3,
        ge=1e-12,
        le=10,
        description="adaptivity τ, in [1e-12, 10]; v starts at τ² (at 0 with bias correction)",
    )


class _MomentsConfig(_AdaptiveConfig):
    beta2: float = Field(0.99, ge=0, lt=1, description="second-moment decay β2, in [0, 1)")
    bias_correction: bool = Field(False, description="Adam's: m, v start at 0 and are divided by 1 - β^t")


class _Adaptive(ServerOptimizer, ABC):
    Config: type[_AdaptiveConfig] = _AdaptiveConfig

    @abstractmethod
    def _second_moment(self, v: np.ndarray, delta_sq: np.ndarray) -> None:
        """Update ``v`` in place from the squared pseudo-gradient."""

    def _update(self, name, x, delta):
        c = self.config
        corrected = getattr(c, "bias_correction", False)
        m = self._moment("m", name, x, 0.0)
        v = self._moment("v", name, x, 0.0 if corrected else c.tau**2)
        m *= c.beta1
        m += (1 - c.beta1) * delta
        self._second_moment(v, delta * delta)
        if not corrected:
            return x + c.eta * m / (np.sqrt(v) + c.tau)
        t = self.step_count
        m_hat = m / (1 - c.beta1**t)
        v_hat = v / (1 - c.beta2**t)
        return x + c.eta * m_hat / (np.sqrt(v_hat) + c.tau)


class FedAdagrad(_Adaptive):
    name = "fedadagrad"
    Config = _AdaptiveConfig  # no beta2, no bias_correction: asking for them is an error

    def _second_moment(self, v, delta_sq):
        v += delta_sq


class FedAdam(_Adaptive):
    name = "fedadam"
    Config = _MomentsConfig

    def _second_moment(self, v, delta_sq):
        v *= self.config.beta2
        v += (1 - self.config.beta2) * delta_sq


class FedYogi(_Adaptive):
    name = "fedyogi"
    Config = _MomentsConfig

    def _second_moment(self, v, delta_sq):
        v -= (1 - self.config.beta2) * delta_sq * np.sign(v - delta_sq)


SERVER_OPTIMIZERS: dict[str, type[ServerOptimizer]] = {
    cls.name: cls for cls in (FedAvg, FedProx, FedAvgM, FedAdagrad, FedAdam, FedYogi)
}


@lru_cache(maxsize=1)
def _strategies() -> dict[str, type[ServerOptimizer]]:
    """Built-ins plus subclasses of ServerOptimizer registered under entry-point group ``fedn.strategies``."""
    found = dict(SERVER_OPTIMIZERS)
    for ep in entry_points(group="fedn.strategies"):
        try:
            cls = ep.load()
        except Exception as exc:
            logger.warning("strategy plug-in %s=%s could not be loaded: %s", ep.name, ep.value, exc)
            continue
        if ep.name in SERVER_OPTIMIZERS or not (isinstance(cls, type) and issubclass(cls, ServerOptimizer)):
            logger.warning(
                "strategy plug-in %s=%s ignored: a built-in name, or not a ServerOptimizer", ep.name, ep.value
            )
            continue
        found[ep.name] = cls
    return found


def make_server_optimizer(name: str, config: Mapping[str, object] | None = None) -> ServerOptimizer:
    """The optimizer ``name`` (built-in or plug-in) with ``config`` validated; InvalidArgument says what is wrong."""
    try:
        cls = _strategies()[name]
    except KeyError:
        raise InvalidArgument(f"unknown strategy {name!r}; known: {', '.join(sorted(_strategies()))}") from None
    try:
        return cls(cls.Config.model_validate(dict(config or {})))
    except ValidationError as exc:
        raise _config_problem(cls.Config, exc, f"invalid config for strategy {name!r}") from None


def _config_problem(config: type[BaseModel], exc: ValidationError, context: str) -> InvalidArgument:
    """Like fedn.errors.validation_problem, with each bad parameter's allowed range (its description)."""
    fields = config.model_fields
    problems = []
    for error in exc.errors():
        name = ".".join(map(str, error["loc"]))
        field = fields.get(name)
        allowed = f" (allowed: {field.description})" if field is not None and field.description else ""
        problems.append(f"{name}: {error['msg']}{allowed}")
    return InvalidArgument(f"{context}: {'; '.join(problems)}")
