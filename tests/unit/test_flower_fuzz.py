"""Fuzzing the Flower adapter where a user's Flower code, or the server's config, meets it.

The caller (the client runtime, the simulator) runs ``client.train`` and then :mod:`fedn.train_result`'s
check. Whatever the Flower client returns or raises, the caller gets a correct result or a clear error:
InvalidArgument (or its InvalidModel) from the adapter, a RuntimeError naming the client when the Flower
client itself raised, a ValueError from the check. No other exception type escapes, and what is accepted
is exactly what the Flower client returned (an accepted NaN is then refused by the aggregators' check).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import sys
from collections.abc import Iterator, Sequence

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from client.flower import FlowerClient, from_ndarrays, to_ndarrays
from fedn.codec import TensorSpec, check_finite
from fedn.errors import InvalidArgument, InvalidModel, NonFiniteValues
from fedn.train_result import check_evaluate_result, check_train_result

HERE = "tests.unit.test_flower_fuzz"
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DEEP = sys.getrecursionlimit() + 100  # deeper than any repr() can go


def _deep(depth: int = DEEP, leaf: object = 1.0, wrap=lambda x: {"k": x}) -> object:
    for _ in range(depth):
        leaf = wrap(leaf)
    return leaf


def _self_containing() -> list:
    loop: list = []
    loop.append(loop)
    return loop


class Scripted:
    """Flower's NumPyClient shape; each method returns (or raises, or computes) what its script says."""

    def __init__(self, script: dict) -> None:
        self.script, self.seen = script, []

    def _play(self, name: str, *args: object) -> object:
        action = self.script[name]
        if isinstance(action, BaseException):
            raise action
        return action(*args) if callable(action) else action

    def get_parameters(self, config):
        return self._play("get_parameters", config)

    def fit(self, parameters, config):
        self.seen.append((parameters, dict(config)))
        return self._play("fit", parameters, config)

    def evaluate(self, parameters, config):
        self.seen.append((parameters, dict(config)))
        return self._play("evaluate", parameters, config)


def scripted(context):
    return Scripted(context.run_config)


def returns_script(context):
    """client_fn returning whatever ``run_config["value"]`` is (a non-client, the fuzz hopes)."""
    return context.run_config["value"]


def raises_script(context):
    raise context.run_config["error"]


NOT_CALLABLE = 42


class ClientApp:  # named as flwr's
    pass


app = ClientApp()


@contextlib.contextmanager
def _debug_logging() -> Iterator[io.StringIO]:
    """The adapter's DEBUG lines formatted, as under ``--verbose``: a failing format must show."""
    log, out = logging.getLogger("client.flower"), io.StringIO()
    handler, level = logging.StreamHandler(out), log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        yield out
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def _client(**script: object) -> FlowerClient:
    return FlowerClient(f"{HERE}:scripted", **script)


# -- the oracle: what the caller must get --------------------------------------------------------------


def _expected_array(value: object, spec: TensorSpec) -> np.ndarray | None:
    """The tensor a correct adapter + check make of ``value``, or None if it must be refused."""
    if not isinstance(value, np.ndarray | np.generic | int | float | list):
        return None
    try:
        array = np.asarray(value)
    except Exception:
        return None
    want = np.dtype(spec.dtype)
    if array.dtype.hasobject or array.shape != spec.shape or array.dtype.kind != want.kind:
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        cast = array.astype(want)
    if want.kind == "i" and not np.array_equal(cast, array):  # no silent wrap-around
        return None
    return cast


def _expected_arrays(value: object, manifest: list[TensorSpec]) -> list[np.ndarray] | None:
    if not isinstance(value, list | tuple) or len(value) != len(manifest):
        return None
    out = [_expected_array(v, s) for v, s in zip(value, manifest, strict=True)]
    return None if any(a is None for a in out) else out


def _expected_count(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def _real(value: object) -> float | None:
    if not isinstance(value, bool | int | float | np.integer | np.floating | np.bool_):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _expected_metrics(value: object) -> dict[str, float] | None:
    if value is None:
        return {}
    if not isinstance(value, dict):
        return None
    kept = {k: _real(v) for k, v in value.items() if isinstance(k, str)}
    return {k: v for k, v in kept.items() if v is not None}


def _expected_loss(value: object) -> float | None:
    return None if isinstance(value, bool | np.bool_) else _real(value)


# -- strategies ----------------------------------------------------------------------------------------

shapes = hnp.array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=3)
specs = st.builds(
    lambda dtype, shape: (dtype, shape), st.sampled_from(["float32", "float64", "int32", "int64"]), shapes
)


@st.composite
def manifests(draw) -> list[TensorSpec]:
    return [TensorSpec(f"p{i}", d, s) for i, (d, s) in enumerate(draw(st.lists(specs, min_size=1, max_size=3)))]


junk = st.one_of(
    st.none(),
    st.text(max_size=5),
    st.binary(max_size=5),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.complex_numbers(),
    st.just([[1.0], [1.0, 2.0]]),  # ragged
    st.builds(lambda: _deep(wrap=lambda x: [x])),  # past numpy's 64 dimensions
    st.builds(_self_containing),
    st.just(2**100),  # an object array
    st.builds(lambda: np.array([1.0, None], dtype=object)),
    st.builds(lambda: np.empty((), dtype=object)),
    st.just(range(3)),
)


@st.composite
def returned_array(draw, spec: TensorSpec) -> object:
    """What a Flower client may hand back for ``spec``: right, another width, shape or kind, or junk."""
    kind = np.dtype(spec.dtype).kind
    choice = draw(st.sampled_from(["same", "width", "shape", "kind", "python", "junk"]))
    if choice == "same":  # NaN and Inf included
        return draw(hnp.arrays(spec.dtype, spec.shape))
    if choice == "width":
        dtype = draw(st.sampled_from(["float16", "float32", "float64"] if kind == "f" else ["int8", "int32", "int64"]))
        return draw(hnp.arrays(dtype, spec.shape))
    if choice == "shape":
        return draw(hnp.arrays(spec.dtype, shapes.filter(lambda s: s != spec.shape)))
    if choice == "kind":
        other = ["bool", "uint8", "complex64", "U2", "S2", "int32" if kind == "f" else "float32"]
        return draw(hnp.arrays(st.sampled_from(other), spec.shape))
    if choice == "python":  # lists and scalars numpy turns into arrays
        return draw(st.one_of(hnp.arrays(spec.dtype, spec.shape).map(lambda a: a.tolist()), st.integers(), st.floats()))
    return draw(junk)


@st.composite
def returned_parameters(draw, manifest: list[TensorSpec]) -> object:
    choice = draw(st.sampled_from(["list", "list", "list", "tuple", "count", "other"]))
    arrays = [draw(returned_array(spec)) for spec in manifest]
    if choice == "tuple":
        return tuple(arrays)
    if choice == "count":  # one too many or one too few
        return [*arrays, np.zeros(1)] if draw(st.booleans()) else arrays[:-1]
    if choice == "other":
        return draw(st.one_of(junk, st.builds(lambda: np.zeros((2, 2))), st.just({"p0": np.zeros(1)})))
    return arrays


huge_ints = st.one_of(
    st.sampled_from([2**63, 2**64 - 1, -(2**63) - 1, 10**400]),
    st.builds(pow, st.just(10), st.just(5000)),  # past str()'s 4300 digits: built, as hypothesis shows strategies
)
numpy_scalars = st.sampled_from(
    [np.int64(5), np.uint64(2**64 - 1), np.int32(-1), np.float32(0.5), np.float64(math.nan), np.bool_(True)]
)
non_finite = st.sampled_from([math.nan, math.inf, -math.inf, np.float64("nan"), np.float32("-inf")])
complexes = st.one_of(st.complex_numbers(), st.just(np.complex128(1 + 2j)), st.just(0.5 + 0j))
counts = st.one_of(
    st.integers(min_value=-3, max_value=2**64),
    st.sampled_from([0, 1]),
    huge_ints,
    st.booleans(),
    st.floats(),  # 7.0, 1.5
    non_finite,
    st.sampled_from(["7", b"7", None, [7]]),
    numpy_scalars,
    complexes,
    st.builds(lambda: _deep(wrap=lambda x: [x])),
)

scalars = st.one_of(
    st.booleans(),
    st.integers(),
    huge_ints,
    st.floats(),
    non_finite,
    st.text(max_size=10),
    st.binary(max_size=10),
    st.none(),
    complexes,
    numpy_scalars,
    st.builds(lambda: np.zeros(2)),
)
nested = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6,
)
metric_keys = st.text(max_size=8) | st.sampled_from([1, 1.5, None, (1,), b"k", "1"])
metric_values = scalars | numpy_scalars | non_finite | nested | st.builds(_deep)
metric_dicts = st.one_of(
    st.none(),
    st.dictionaries(metric_keys, metric_values, min_size=1, max_size=6),
    st.sampled_from([[("a", 1.0)], "a=1", 3, {1, 2}]),
)


def _triple(draw, first: object, count: object, metrics: object) -> object:
    """The triple as Flower returns it, or the wrong shape of it."""
    shape = draw(st.sampled_from(["tuple", "tuple", "tuple", "list", "short", "long", "other"]))
    if shape == "list":
        return [first, count, metrics]
    if shape == "short":
        return (first, count)
    if shape == "long":
        return (first, count, metrics, {})
    if shape == "other":
        return draw(st.one_of(st.none(), st.just({"parameters": first}), st.just(first)))
    return (first, count, metrics)


fine_counts = st.integers(min_value=1, max_value=2**63)
fine_metrics = st.dictionaries(st.text(max_size=5), st.floats(allow_nan=False, allow_infinity=False), max_size=3)
FIELDS = ["first", "num_examples", "metrics", "shape", "all"]  # which part goes wrong; the others are fine


@st.composite
def fit_cases(draw) -> tuple[list[TensorSpec], object]:
    manifest, field = draw(manifests()), draw(st.sampled_from(FIELDS))
    if field in ("first", "all"):
        params = draw(returned_parameters(manifest))
    else:
        params = [draw(hnp.arrays(s.dtype, s.shape)) for s in manifest]
    count = draw(counts if field in ("num_examples", "all") else fine_counts)
    metrics = draw(metric_dicts if field in ("metrics", "all") else fine_metrics)
    return manifest, _triple(draw, params, count, metrics) if field in ("shape", "all") else (params, count, metrics)


losses = st.one_of(
    st.floats(),
    non_finite,
    st.integers(),
    huge_ints,
    st.booleans(),
    numpy_scalars,
    complexes,
    st.sampled_from(["0.5", None, [0.5], np.array(0.5)]),
)


@st.composite
def evaluate_cases(draw) -> object:
    field = draw(st.sampled_from(FIELDS))
    loss = draw(losses if field in ("first", "all") else st.floats(allow_nan=False, allow_infinity=False))
    count = draw(counts if field in ("num_examples", "all") else fine_counts)
    metrics = draw(metric_dicts if field in ("metrics", "all") else fine_metrics)
    return _triple(draw, loss, count, metrics) if field in ("shape", "all") else (loss, count, metrics)


def _global_model(manifest: list[TensorSpec]) -> dict[str, np.ndarray]:
    return {s.name: np.zeros(s.shape, s.dtype) for s in manifest}


# -- fit and evaluate: what the Flower client returns ------------------------------------------------


@FUZZ
@given(fit_cases())
def test_fit_gives_the_exact_update_or_a_clear_error(case):
    manifest, returned = case
    c = _client(fit=returned)
    triple = isinstance(returned, tuple | list) and len(returned) == 3
    want_arrays = _expected_arrays(returned[0], manifest) if triple else None
    valid = triple and want_arrays is not None
    want_count = _expected_count(returned[1]) if valid else None
    want_metrics = _expected_metrics(returned[2]) if valid else None
    valid = valid and want_count is not None and want_metrics is not None
    with _debug_logging():
        try:
            result = c.train(_global_model(manifest), {"round": 1})
        except InvalidArgument as exc:  # the adapter's refusal; any other type fails the test
            assert not valid, f"refused a valid result: {exc}"
            assert f"{HERE}:scripted fit()" in str(exc)
            return
    arrays, count, metrics = result  # the adapter's own result is well typed
    assert list(arrays) == [f"p{i}" for i in range(len(arrays))]
    assert all(isinstance(a, np.ndarray) and not a.dtype.hasobject for a in arrays.values())
    assert type(count) is int and 0 <= count <= sys.float_info.max  # fedn weighs by float(num_examples)
    assert all(type(k) is str and type(v) is float and math.isfinite(v) for k, v in metrics.items())
    try:
        checked, weight, checked_metrics = check_train_result(result, manifest)
    except ValueError as exc:
        assert type(exc) is ValueError
        assert not valid, f"check refused a valid result: {exc}"
        return
    assert valid, f"accepted {returned!r}"
    assert weight == want_count and checked_metrics == want_metrics
    for spec, want in zip(manifest, want_arrays, strict=True):
        got = checked[spec.name]
        assert got.dtype == np.dtype(spec.dtype) and got.shape == spec.shape
        np.testing.assert_array_equal(got, want)
        if got.dtype.kind == "f" and not np.isfinite(got).all():  # the aggregators refuse it, by name
            with pytest.raises(NonFiniteValues, match=spec.name):
                check_finite(spec.name, got)


@st.composite
def other_widths(draw) -> tuple[list[TensorSpec], list[np.ndarray]]:
    manifest = draw(manifests())
    arrays = []
    for spec in manifest:
        floats = np.dtype(spec.dtype).kind == "f"
        dtype = draw(
            st.sampled_from(["float16", "float32", "float64"] if floats else ["int8", "int16", "int32", "int64"])
        )
        arrays.append(draw(hnp.arrays(dtype, spec.shape)))
    return manifest, arrays


def _fits(array: np.ndarray, dtype: str) -> bool:
    if np.dtype(dtype).kind != "i" or array.size == 0:
        return True
    info = np.iinfo(dtype)
    return bool(info.min <= array.min() and array.max() <= info.max)


@FUZZ
@given(other_widths())
def test_an_update_in_another_width_comes_back_in_the_model_dtype_or_is_refused(case):
    manifest, arrays = case
    fits = all(_fits(a, s.dtype) for a, s in zip(arrays, manifest, strict=True))
    try:
        with np.errstate(over="ignore"):  # float64 past float32's range becomes Inf, which is refused later
            checked, _, _ = check_train_result(
                _client(fit=(arrays, 1, {})).train(_global_model(manifest), {}), manifest
            )
    except ValueError as exc:
        assert type(exc) is ValueError and not fits, str(exc)
        return
    assert fits, "an int update was wrapped into the model's dtype"
    for spec, a in zip(manifest, arrays, strict=True):
        assert checked[spec.name].dtype == np.dtype(spec.dtype)
        with np.errstate(over="ignore"):
            np.testing.assert_array_equal(checked[spec.name], a.astype(spec.dtype))
        if np.dtype(spec.dtype).kind == "i":
            assert np.array_equal(checked[spec.name], a)  # the very values, not a wrapped copy


@FUZZ
@given(evaluate_cases())
def test_evaluate_gives_the_exact_figures_or_a_clear_error(returned):
    c = _client(evaluate=returned)
    triple = isinstance(returned, tuple | list) and len(returned) == 3
    want_loss = _expected_loss(returned[0]) if triple else None
    want_count = _expected_count(returned[1]) if triple else None
    want_metrics = _expected_metrics(returned[2]) if triple else None
    valid = None not in (want_loss, want_count, want_metrics)
    with _debug_logging():
        try:
            result = c.evaluate({"p0": np.zeros(2, np.float32)}, {"round": 1})
        except InvalidArgument as exc:
            assert not valid, f"refused a valid result: {exc}"
            assert f"{HERE}:scripted evaluate()" in str(exc)
            return
    loss, count, metrics = result
    assert type(loss) is float and type(count) is int and 0 <= count <= sys.float_info.max
    assert all(type(k) is str and type(v) is float and math.isfinite(v) for k, v in metrics.items())
    try:
        checked = check_evaluate_result(result)
    except ValueError as exc:
        assert type(exc) is ValueError
        assert not valid, f"check refused a valid result: {exc}"
        return
    assert valid, f"accepted {returned!r}"
    assert checked == (want_loss, want_count, want_metrics)


@FUZZ
@given(st.dictionaries(metric_keys, metric_values, max_size=8))
def test_metrics_keep_exactly_the_finite_real_numbers_under_str_keys(metrics):
    c = _client(fit=lambda p, _: (p, 1, metrics), evaluate=(0.5, 1, metrics))
    want = _expected_metrics(metrics)
    with _debug_logging():
        _, _, fit_metrics = check_train_result(c.train({"p0": np.zeros(1)}, {}), [TensorSpec("p0", "float64", (1,))])
        _, _, evaluate_metrics = check_evaluate_result(c.evaluate({"p0": np.zeros(1)}, {}))
    assert fit_metrics == want and evaluate_metrics == want


@FUZZ
@given(counts)
def test_num_examples_is_a_positive_int_weight_or_refused(count):
    c = _client(fit=lambda p, _: (p, count, {}), evaluate=(0.5, count, {}))
    want = _expected_count(count)
    for call, check in [
        (c.train, lambda r: check_train_result(r, [TensorSpec("p0", "float64", (1,))])[1]),
        (c.evaluate, lambda r: check_evaluate_result(r)[1]),
    ]:
        try:
            weight = check(call({"p0": np.zeros(1)}, {}))
        except InvalidArgument as exc:  # the adapter's refusal: a negative, a non-int, past float's range
            assert want is None and "num_examples must be a non-negative int" in str(exc)
            continue
        except ValueError as exc:  # the check's: 0
            assert type(exc) is ValueError and want is None and count == 0
            continue
        assert weight == want


@FUZZ
@given(st.one_of(junk, st.lists(junk | hnp.arrays(st.sampled_from(["float32", "int64", "bool"]), shapes), max_size=3)))
def test_get_parameters_gives_named_arrays_or_a_clear_error(returned):
    c = _client(get_parameters=returned)
    arrays = list(returned) if isinstance(returned, list | tuple) else None
    try:
        named = c.initial_parameters()
    except InvalidArgument as exc:
        assert arrays is None or any(_expected_array(a, _spec_of(a)) is None for a in arrays), str(exc)
        return
    assert arrays is not None and list(named) == [f"p{i}" for i in range(len(arrays))]
    for a, got in zip(arrays, named.values(), strict=True):
        assert not got.dtype.hasobject
        np.testing.assert_array_equal(got, np.asarray(a))


def _spec_of(value: object) -> TensorSpec:
    """The spec ``value`` would have as an array (object dtype, so refused, if numpy cannot make one)."""
    try:
        array = np.asarray(value)
    except Exception:
        return TensorSpec("p", "object", ())
    return TensorSpec("p", array.dtype.str, array.shape)


exceptions = st.one_of(
    st.builds(
        lambda cls, text: cls(text),
        st.sampled_from([ValueError, KeyError, TypeError, RuntimeError, RecursionError, OSError, MemoryError]),
        st.text(max_size=50) | st.just("x" * 100_000),
    ),
    st.builds(lambda: ValueError(_deep(wrap=lambda x: [x]))),  # str() would recurse too deep
    st.builds(lambda: _Unprintable()),
)


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise KeyError("no text")


@FUZZ
@given(exceptions, st.sampled_from(["fit", "evaluate", "get_parameters"]))
def test_a_raising_flower_client_fails_the_round_in_one_bounded_message(error, method):
    c = _client(**{method: error})
    with _debug_logging(), pytest.raises(RuntimeError) as raised:
        if method == "get_parameters":
            c.initial_parameters()
        else:
            getattr(c, "train" if method == "fit" else "evaluate")({"p0": np.zeros(1)}, {})
    assert type(raised.value) is RuntimeError  # not RecursionError, its subclass
    assert str(raised.value).startswith(f"Flower client {HERE}:scripted {method}() failed: {type(error).__name__}")
    assert len(str(raised.value)) < 2000  # reported to the combiner as the round's failure


@pytest.mark.parametrize("error", [KeyboardInterrupt(), SystemExit(3)])
def test_an_interrupt_in_the_flower_client_is_not_swallowed(error):
    with pytest.raises(type(error)):
        _client(fit=error).train({"p0": np.zeros(1)}, {})


# -- client_fn and the module:function reference --------------------------------------------------


class _OnlyFit:
    def fit(self, parameters, config):
        return parameters, 1, {}


class _FitNotCallable(Scripted):
    fit = 3


class _GetattrRaises:
    """Any attribute but a dunder raises KeyError (a lazy proxy that is not a client)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise KeyError(name)


non_clients = st.one_of(
    st.none(),
    st.integers(),
    st.text(max_size=5),
    st.binary(max_size=5),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.sampled_from([Scripted, object, np, print]),  # a class has the methods too, unbound
    st.builds(object),
    st.builds(_OnlyFit),
    st.builds(lambda: _FitNotCallable({})),
    st.builds(_GetattrRaises),
    st.builds(lambda: np.zeros(3)),
    st.builds(lambda: type("Wrapper", (), {"numpy_client": 3})()),
)


@FUZZ
@given(non_clients, st.sampled_from(["initial_parameters", "train", "evaluate"]))
def test_a_client_fn_returning_a_non_client_is_refused_at_first_use(value, use):
    c = FlowerClient(f"{HERE}:returns_script", value=value)
    with pytest.raises(InvalidArgument, match=f"{HERE}:returns_script returned .*not a Flower NumPyClient"):
        if use == "initial_parameters":
            c.initial_parameters()
        else:
            getattr(c, use)({"p0": np.zeros(1)}, {})


@FUZZ
@given(exceptions)
def test_a_raising_client_fn_is_one_invalid_argument(error):
    with _debug_logging(), pytest.raises(InvalidArgument) as raised:
        FlowerClient(f"{HERE}:raises_script", error=error).initial_parameters()
    assert str(raised.value).startswith(f"{HERE}:raises_script failed: {type(error).__name__}")


names = st.text(max_size=12)
bad_specs = st.one_of(
    names.filter(lambda s: ":" not in s),  # no colon
    names.map(lambda s: ":" + s),  # no module
    names.filter(lambda s: ":" not in s).map(lambda s: f"no_such_fedn_module_{s}:"),  # no attribute
    st.tuples(names, names).map(lambda t: f"no_such_fedn_module_{t[0]}:{t[1]}"),  # no such module
    st.tuples(st.integers(1, 3), names, names).map(lambda t: "." * t[0] + f"{t[1]}:{t[2]}"),  # relative
    names.filter(lambda s: not hasattr(sys.modules[__name__], s)).map(lambda s: f"{HERE}:{s}"),  # no attribute
    st.sampled_from([f"{HERE}:NOT_CALLABLE", f"{HERE}:app", f"{HERE}:scripted:extra"]),
)


@FUZZ
@given(bad_specs)
def test_a_bad_reference_is_one_invalid_argument(spec):
    with pytest.raises(InvalidArgument):
        FlowerClient(spec)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ("1 / 0", "ZeroDivisionError"),
        ("def client_fn(:\n    pass", "SyntaxError"),
        ("undefined_name", "NameError"),
        ("import no_such_fedn_dependency", "No module named"),
    ],
)
def test_a_module_that_fails_to_import_is_one_invalid_argument(tmp_path, monkeypatch, body, error):
    module = f"fedn_fuzz_broken_{error.split()[0].lower()}"
    (tmp_path / f"{module}.py").write_text(f"{body}\n\ndef client_fn(context):\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(InvalidArgument, match=error):
        FlowerClient(f"{module}:client_fn")
    assert module not in sys.modules


# -- what the server sends: config and parameter names ------------------------------------------------

config_values = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([2**63, 2**63 - 1, -(2**63), 0, "", "x" * 100_000, "ünïcødé ✓ \u202e", b"", b"\x00\xff"]),
    st.floats(),  # NaN and Inf included
    st.text(),
    st.binary(max_size=20),
)


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["round", "server_round", "epochs", ""]) | st.text(max_size=10), config_values, max_size=6
    ),
    st.one_of(st.none(), st.integers(min_value=1, max_value=2**63)),
)
def test_the_round_config_reaches_flower_as_sent(config, round_index):
    if round_index is not None:
        config["round"] = round_index
    sent = dict(config)

    def fit(parameters, seen):
        seen.clear()  # a Flower client may do as it likes with its config
        return parameters, 3, {}

    c = _client(fit=fit, evaluate=(0.5, 2, {}))
    params = {"p0": np.arange(3.0), "p1": np.ones((2, 2), np.float32)}
    new, n, _ = c.train({k: a.copy() for k, a in params.items()}, config)
    assert config.keys() == sent.keys() and all(config[k] is sent[k] for k in sent)  # NaN != NaN: by identity
    c.evaluate(params, config)
    want = dict(sent)
    if "round" in sent and "server_round" not in sent:
        want["server_round"] = sent["round"]
    for _, seen in c.flower_client.seen:
        assert seen.keys() == want.keys() and all(seen[k] is want[k] for k in want)
    assert n == 3 and [a.tolist() for a in new.values()] == [a.tolist() for a in params.values()]


@FUZZ
@given(
    st.lists(
        st.one_of(
            st.sampled_from(["p0", "p1", "p2", "p3", "p\u00b2", "p\u0663", "p00", "p-1", "P0", "p1 ", "p", "p+1"]),
            st.text(max_size=4),
        ),
        unique=True,
        max_size=5,
    )
)
def test_parameter_names_map_by_index_or_are_refused(names):
    params = {name: np.full(1, i) for i, name in enumerate(names)}
    expected = [f"p{i}" for i in range(len(names))]
    if sorted(names) != sorted(expected):
        with pytest.raises(InvalidModel, match=r"p0\.\.p"):
            to_ndarrays(params)
        return
    assert [a is params[name] for a, name in zip(to_ndarrays(params), expected, strict=True)] == [True] * len(names)


@settings(FUZZ, max_examples=50)  # its arrays are slow to draw; a quarter of the lists pass ten
@given(
    st.integers(min_value=0, max_value=14).flatmap(  # past ten, where "p10" sorts before "p2"
        lambda n: st.lists(
            hnp.arrays(hnp.scalar_dtypes(), hnp.array_shapes(min_dims=0, max_side=2)), min_size=n, max_size=n
        )
    )
)
def test_arrays_of_any_dtype_round_trip_by_index(arrays):
    named = from_ndarrays(arrays)
    back = to_ndarrays(dict(reversed(named.items())))
    assert [(a.dtype, a.shape) for a in back] == [(a.dtype, a.shape) for a in arrays]
    for a, b in zip(arrays, back, strict=True):
        np.testing.assert_array_equal(a, b)


# -- regressions: each failed before its fix -------------------------------------------------------


def test_an_int_metric_past_float_range_is_left_out():
    # was: OverflowError from float(10**400) in the adapter
    c = _client(fit=lambda p, _: (p, 1, {"big": 10**400, "ok": 2**63}))
    assert c.train({"p0": np.zeros(1)}, {})[2] == {"ok": float(2**63)}


def test_complex_numbers_are_not_real():
    # was: the metric kept its real part (with a ComplexWarning) and a complex loss was taken as its real part
    c = _client(fit=lambda p, _: (p, 1, {"z": np.complex128(1 + 2j)}), evaluate=(np.complex128(0.5 + 1j), 1, {}))
    assert c.train({"p0": np.zeros(1)}, {})[2] == {}
    with pytest.raises(InvalidArgument, match="loss must be a real number"):
        c.evaluate({"p0": np.zeros(1)}, {})


def test_a_bool_metric_from_numpy_is_reported_as_a_python_bool_is():
    c = _client(fit=lambda p, _: (p, 1, {"a": True, "b": np.bool_(True)}))
    assert c.train({"p0": np.zeros(1)}, {})[2] == {"a": 1.0, "b": 1.0}


def test_a_deep_metric_under_debug_logging():
    # was: RecursionError from the DEBUG line's %r, which logging's StreamHandler re-raises
    c = _client(fit=lambda p, _: (p, 1, {"deep": _deep(), "ok": 1}))
    with _debug_logging() as log:
        assert c.train({"p0": np.zeros(1)}, {})[2] == {"ok": 1.0}
    assert "deep" in log.getvalue()


def test_a_deep_num_examples_is_refused_by_name():
    # was: RecursionError from the message's {value!r}
    with pytest.raises(InvalidArgument, match="num_examples must be a non-negative int"):
        _client(fit=lambda p, _: (p, _deep(wrap=lambda x: [x]), {})).train({"p0": np.zeros(1)}, {})


@pytest.mark.parametrize("count", [10**400, 10**5000], ids=["1e400", "1e5000"])
def test_num_examples_past_float_range(count):
    # was: OverflowError from check_train_result / check_evaluate_result
    c = _client(fit=lambda p, _: (p, count, {}), evaluate=(0.5, count, {}))
    for call in (c.train, c.evaluate):
        with pytest.raises(InvalidArgument, match="num_examples must be a non-negative int"):
            call({"p0": np.zeros(1)}, {})
    with pytest.raises(ValueError, match="num_examples must be a number"):
        check_train_result(({"p0": np.zeros(1)}, 10**400, {}), [TensorSpec("p0", "float64", (1,))])
    with pytest.raises(ValueError, match="must return a number"):
        check_evaluate_result((0.5, 10**400, {}))
    with pytest.raises(ValueError, match="metrics must be a dict of name -> number"):
        check_train_result(({"p0": np.zeros(1)}, 1, {"m": 10**400}), [TensorSpec("p0", "float64", (1,))])


def test_an_int_update_outside_the_model_dtype_is_refused_not_wrapped():
    # was: int64 2**40 cast to int32 0, silently
    manifest = [TensorSpec("p0", "int32", (2,))]
    with pytest.raises(ValueError, match="int64 values outside int32"):
        check_train_result(({"p0": np.array([1, 2**40])}, 1, {}), manifest)
    params, _, _ = check_train_result(({"p0": np.array([1, -(2**31)])}, 1, {}), manifest)
    assert params["p0"].dtype == np.int32 and params["p0"].tolist() == [1, -(2**31)]


def test_an_unprintable_exception_from_fit():
    # was: the KeyError from its __str__ escaped in place of the one-line RuntimeError
    with pytest.raises(RuntimeError, match=r"fit\(\) failed: _Unprintable: <unprintable _Unprintable>"):
        _client(fit=_Unprintable()).train({"p0": np.zeros(1)}, {})


def test_a_unicode_digit_name_is_not_an_index():
    # was: ValueError from int("²")
    with pytest.raises(InvalidModel, match=r"p0\.\.p0"):
        to_ndarrays({"p\u00b2": np.zeros(1)})


@pytest.mark.parametrize("element", [[[1.0], [1.0, 2.0]], _deep(wrap=lambda x: [x]), [1.0, object()]])
def test_an_element_numpy_cannot_take_is_named(element):
    # was: numpy's ValueError without the client or the index (or, for objects, an object array)
    with pytest.raises(InvalidModel, match=rf"{HERE}:scripted fit\(\)\[1\]"):
        _client(fit=lambda p, _: ([p[0], element], 1, {})).train({"p0": np.zeros(1), "p1": np.zeros(2)}, {})


class _Endless(Sequence):
    """A Sequence of 10**12 arrays; more than a thousand reads means the adapter is walking it."""

    def __init__(self) -> None:
        self.reads = 0

    def __len__(self) -> int:
        return 10**12

    def __getitem__(self, i):
        self.reads += 1
        assert self.reads < 1000, "walked an endless sequence"
        return np.zeros(1)


def test_a_sequence_other_than_a_list_is_refused_unread():
    # was: every element read (a hang for range(10**12))
    endless = _Endless()
    with pytest.raises(InvalidModel, match="must be a list of numpy arrays, not _Endless"):
        _client(fit=(endless, 1, {})).train({"p0": np.zeros(1)}, {})
    assert endless.reads == 0


@pytest.mark.parametrize(
    ("value", "shown"),
    [(Scripted, "the class Scripted"), (_FitNotCallable({}), "a _FitNotCallable"), (_GetattrRaises(), "a _Get")],
)
def test_a_class_or_a_half_client_is_refused_before_the_first_round(value, shown):
    # was: taken, to fail in fit() as a TypeError (or a KeyError escaping from __getattr__)
    with pytest.raises(InvalidArgument, match=f"returned {shown}"):
        _ = FlowerClient(f"{HERE}:returns_script", value=value).flower_client


def test_int_metric_keys_are_left_out_not_merged():
    # was: {1: 1.0, "1": 2.0} reported as {"1": 2.0}, one value silently lost
    c = _client(fit=lambda p, _: (p, 1, {1: 1.0, "1": 2.0, None: 3.0}))
    assert c.train({"p0": np.zeros(1)}, {})[2] == {"1": 2.0}


@pytest.mark.parametrize("spec", [".quickstart:client_fn", "..x:y", ".:f"])
def test_a_relative_reference_is_one_invalid_argument(spec):
    # was: TypeError from importlib ("the 'package' argument is required")
    with pytest.raises(InvalidArgument, match=r"cannot import .*: TypeError: the 'package' argument is required"):
        FlowerClient(spec)


def test_a_short_triple_says_how_many_values_came_back():
    with pytest.raises(InvalidArgument, match=r"must return \(parameters, num_examples, metrics\), not 2 values"):
        _client(fit=lambda p, _: (p, 1)).train({"p0": np.zeros(1)}, {})
