"""Run a Flower client as a fedn client, unchanged: ``fedn client start --flower module:client_fn``.

Flower's ``NumPyClient`` speaks lists of ndarrays; fedn speaks named arrays. The adapter names the
list ``p0 .. p{N-1}`` in order and turns it back by index, passes the round's config through (plus
Flower's ``server_round``), keeps the numeric metrics, and turns a bad return value or a failing
``fit`` into one line naming the client function.

``flwr`` is not a dependency: a client function that returns a ``NumPyClient``-shaped object (duck
typed) runs without it. Only a full Flower ``Client`` (``fit(FitIns) -> FitRes``) needs ``flwr``,
imported lazily to convert its messages. A ``ClientApp`` is refused with the way out: its client
function is hidden in a closure, so name the function instead (see docs/flower.md).
"""

from __future__ import annotations

import inspect
import logging
import math
import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, cast, runtime_checkable

import numpy as np

from client.sdk import Client, EvaluateResult, TrainResult
from fedn.codec import NamedArrays
from fedn.errors import InvalidArgument, InvalidModel
from fedn.loading import load_object
from fedn.records import ConfigScalar

__all__ = ["FlowerClient", "FlowerContext", "NumPyClientLike", "from_ndarrays", "to_ndarrays"]

logger = logging.getLogger(__name__)


@runtime_checkable
class NumPyClientLike(Protocol):
    """The shape of Flower's ``NumPyClient`` that the adapter calls."""

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]: ...
    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[Any, int, dict]: ...
    def evaluate(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[float, int, dict]: ...


@dataclass
class FlowerContext:
    """What a Flower ``client_fn(context)`` reads: ``node_config["partition-id"]``, ``run_config``, ..."""

    node_id: int
    node_config: dict[str, Any]
    run_config: dict[str, Any]
    run_id: int = 0
    state: dict[str, Any] = field(default_factory=dict)


def to_ndarrays(params: NamedArrays) -> list[np.ndarray]:
    """``{"p0": a, "p1": b, ...}`` -> ``[a, b, ...]``, by index; InvalidModel if the names are not p0..p{N-1}."""
    expected = [f"p{i}" for i in range(len(params))]
    if sorted(params, key=_index) != expected:
        raise InvalidModel(f"a Flower model has parameters p0..p{len(params) - 1}, not {sorted(params)[:5]}")
    # Flower clients may write into what they get (set_weights in place): hand them writable arrays
    return [a if a.flags.writeable else a.copy() for a in (np.asarray(params[name]) for name in expected)]


def from_ndarrays(arrays: object, what: str = "parameters") -> NamedArrays:
    """``[a, b, ...]`` -> ``{"p0": a, "p1": b, ...}``; InvalidModel if ``arrays`` is not a list of arrays.

    Only a list or tuple (Flower's ``NDArrays``): another Sequence, such as ``range(10**12)``, would be
    walked element by element. An element numpy cannot make an array of (ragged, too deep) or makes an
    object array of is refused here, naming it, rather than by numpy or the codec without the name."""
    if not isinstance(arrays, list | tuple):
        raise InvalidModel(f"{what} must be a list of numpy arrays, not {type(arrays).__name__}")
    out = {}
    for i, a in enumerate(arrays):
        if not isinstance(a, np.ndarray | np.generic | int | float | list):
            raise InvalidModel(f"{what}[{i}] is a {type(a).__name__}, not a numpy array")
        try:
            array = np.asarray(a)
        except Exception as exc:
            raise InvalidModel(f"{what}[{i}] is not an array: {type(exc).__name__}: {_text(exc)}") from None
        if array.dtype.hasobject:
            raise InvalidModel(f"{what}[{i}] is an array of Python objects, not of numbers")
        out[f"p{i}"] = array
    return out


def _index(name: str) -> tuple[int, str]:
    digits = name[1:]  # ASCII only: "p\u00b2" is isdigit() but not int()
    return (int(digits), name) if name.startswith("p") and digits.isascii() and digits.isdigit() else (-1, name)


def _text(value: object) -> str:
    """A user's value (its repr) or exception (its str) as text, bounded: either may be huge, 1000-deep
    or unprintable, and a message about it must not fail in its turn."""
    try:
        return reprlib.repr(value) if not isinstance(value, BaseException) else str(value)[:1000]
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def _flower_config(config: Mapping[str, ConfigScalar]) -> dict[str, ConfigScalar]:
    """fedn's round config as Flower's: the same scalars, and ``server_round`` as Flower's server sends it."""
    out = dict(config)
    if "round" in out:
        out.setdefault("server_round", out["round"])
    return out


def _real(value: object) -> float | None:
    """A real number as a float, or None: bool and numpy's too, not complex, not past float's range."""
    if not isinstance(value, bool | int | float | np.integer | np.floating | np.bool_):
        return None
    try:
        return float(value)
    except OverflowError:  # an int past 1e308
        return None


def _fedn_metrics(metrics: object, what: str) -> dict[str, float]:
    """Flower metrics (``dict[str, Scalar]``) -> fedn metrics (floats): finite real numbers under a str key
    kept, the rest (strings, bytes, NaN, a non-str key that ``str()`` could make collide) left out."""
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise InvalidArgument(f"{what} metrics must be a dict, not {type(metrics).__name__}")
    out = {}
    for key, value in metrics.items():
        number = _real(value)
        if isinstance(key, str) and number is not None and math.isfinite(number):
            out[key] = number
        else:  # reprlib: a 1000-deep value's repr would raise RecursionError, which logging re-raises
            logger.debug("Flower metric %s=%s is not a finite number; not reported", _text(key), _text(value))
    return out


def _triple(result: object, what: str, shape: str) -> tuple[Any, Any, Any]:
    if not isinstance(result, tuple | list) or len(result) != 3:
        got = f"{len(result)} values" if isinstance(result, tuple | list) else type(result).__name__
        raise InvalidArgument(f"{what} must return {shape}, not {got}")
    return result[0], result[1], result[2]


def _num_examples(value: object, what: str) -> int:
    """A non-negative int that a float can hold: fedn weighs updates by ``float(num_examples)``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0 or _real(value) is None:
        raise InvalidArgument(f"{what} num_examples must be a non-negative int, not {_text(value)}")
    return int(value)


class _ClientView:
    """A full Flower ``Client`` (``fit(FitIns) -> FitRes``) seen as a NumPyClient; needs ``flwr``."""

    def __init__(self, client: object) -> None:
        self._client = client

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        from flwr.common import GetParametersIns, parameters_to_ndarrays

        return parameters_to_ndarrays(self._client.get_parameters(GetParametersIns(config=config)).parameters)

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[Any, int, dict]:
        from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays

        res = self._client.fit(FitIns(ndarrays_to_parameters(parameters), config))
        return parameters_to_ndarrays(res.parameters), res.num_examples, res.metrics

    def evaluate(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[float, int, dict]:
        from flwr.common import EvaluateIns, ndarrays_to_parameters

        res = self._client.evaluate(EvaluateIns(ndarrays_to_parameters(parameters), config))
        return res.loss, res.num_examples, res.metrics


def _as_numpy_client(obj: object, spec: str) -> NumPyClientLike:
    """What ``client_fn`` returned, as the NumPyClient shape: unwrapped from ``.to_client()``, or converted.

    The shape is three callable methods of an instance: a class has them too, unbound, and an attribute
    that is not callable would only fail at the first round."""
    try:
        inner = getattr(obj, "numpy_client", None)  # flwr's NumPyClient.to_client() keeps the original here
    except Exception:  # a __getattr__ that raises: not a client either
        inner = None
    if inner is not None:
        obj = inner
    try:
        from flwr.client import Client as FlwrClient
        from flwr.client import NumPyClient
    except ImportError:  # flwr absent: the shape decides
        FlwrClient = NumPyClient = None
    if FlwrClient is not None and isinstance(obj, FlwrClient) and not isinstance(obj, NumPyClient):
        return _ClientView(obj)
    try:
        shaped = not isinstance(obj, type) and all(
            callable(getattr(obj, name, None)) for name in ("get_parameters", "fit", "evaluate")
        )
    except Exception:
        shaped = False
    if not shaped:
        raise InvalidArgument(
            f"{spec} returned {_what(obj)}, not a Flower NumPyClient instance "
            "(get_parameters(config), fit(parameters, config), evaluate(parameters, config))"
        )
    return cast(NumPyClientLike, obj)  # checked above, method by method


def _what(obj: object) -> str:
    return f"the class {obj.__name__}" if isinstance(obj, type) else f"a {type(obj).__name__}"


def _call_client_fn(fn: Callable[..., object], spec: str, context: FlowerContext) -> object:
    """Flower's signatures: ``client_fn(context)`` (current), ``client_fn(cid: str)`` (older), ``client_fn()``."""
    try:
        params = [
            p
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        ]
    except (TypeError, ValueError):
        params = []
    if len(params) > 1:
        raise InvalidArgument(f"{spec} takes {len(params)} arguments; a Flower client_fn takes context (or cid)")
    if not params:
        args: tuple[object, ...] = ()
    elif params[0].name in ("cid", "client_id") or params[0].annotation in (str, "str"):
        args = (str(context.node_config["partition-id"]),)
    else:
        args = (context,)
    try:
        return fn(*args)
    except Exception as exc:
        logger.debug("%s failed", spec, exc_info=True)
        raise InvalidArgument(f"{spec} failed: {type(exc).__name__}: {_text(exc)}") from None


class FlowerClient(Client):
    """A fedn client that runs the Flower client ``client_fn`` returns.

    ``partition`` and ``num_partitions`` (given by ``fedn local`` and ``fedn simulate``) become Flower's
    ``node_config["partition-id"]`` and ``["num-partitions"]``; every other keyword argument becomes
    ``run_config``. ``client_fn`` is called once per instance, on first use.
    """

    def __init__(self, flower: str, partition: int = 0, num_partitions: int = 1, **run_config: Any) -> None:
        fn = load_object(flower)  # InvalidArgument for any import failure, the module's own included
        if type(fn).__name__ == "ClientApp":
            raise InvalidArgument(
                f"{flower} is a ClientApp; name its client function instead (--flower module:client_fn)"
            )
        if not callable(fn):
            raise InvalidArgument(f"{flower} is not a client function")
        self._spec = flower
        self._client_fn = fn
        self._context = FlowerContext(
            node_id=partition,
            node_config={"partition-id": partition, "num-partitions": num_partitions},
            run_config=dict(run_config),
        )
        self._client: NumPyClientLike | None = None

    @property
    def flower_client(self) -> NumPyClientLike:
        if self._client is None:
            self._client = _as_numpy_client(_call_client_fn(self._client_fn, self._spec, self._context), self._spec)
        return self._client

    def initial_parameters(self) -> NamedArrays:
        arrays = self._run("get_parameters", self.flower_client.get_parameters, {})
        return from_ndarrays(arrays, f"{self._spec} get_parameters()")

    def train(self, params: NamedArrays, config: dict[str, ConfigScalar]) -> TrainResult:
        what = f"{self._spec} fit()"
        result = self._run("fit", self.flower_client.fit, to_ndarrays(params), _flower_config(config))
        arrays, num_examples, metrics = _triple(result, what, "(parameters, num_examples, metrics)")
        return from_ndarrays(arrays, what), _num_examples(num_examples, what), _fedn_metrics(metrics, what)

    def evaluate(self, params: NamedArrays, config: dict[str, ConfigScalar]) -> EvaluateResult:
        what = f"{self._spec} evaluate()"
        result = self._run("evaluate", self.flower_client.evaluate, to_ndarrays(params), _flower_config(config))
        loss, num_examples, metrics = _triple(result, what, "(loss, num_examples, metrics)")
        number = None if isinstance(loss, bool | np.bool_) else _real(loss)
        if number is None:
            raise InvalidArgument(f"{what} loss must be a real number, not {_text(loss)}")
        return number, _num_examples(num_examples, what), _fedn_metrics(metrics, what)

    def _run(self, name: str, method: Callable[..., object], *args: object) -> object:
        """The Flower client's own exception becomes one line that names it; the traceback goes to DEBUG."""
        try:
            return method(*args)
        except Exception as exc:
            logger.debug("%s %s() failed", self._spec, name, exc_info=True)
            text = f"{type(exc).__name__}: {_text(exc)}"
            raise RuntimeError(f"Flower client {self._spec} {name}() failed: {text}") from None
