"""Server optimizers against Reddi et al. Algorithm 2, computed by hand for several steps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedn.aggregation.server_optimizers import SERVER_OPTIMIZERS, make_server_optimizer
from fedn.errors import InvalidArgument

# One scalar parameter; each step the clients' mean moves by these pseudo-gradients.
DELTAS = [0.5, -0.2, 0.3, 0.1]


def _run(name: str, config: dict) -> list[float]:
    opt = make_server_optimizer(name, config)
    x, out = 1.0, []
    for d in DELTAS:
        new = opt.step({"w": np.array([x], np.float64), "n": np.array(7)}, {"w": np.array([x + d]), "n": np.array(8)})
        assert int(new["n"]) == 8  # non-float tensors take the merged value
        x = float(new["w"][0])
        out.append(x)
    return out


def _by_hand(kind: str, eta: float, b1: float, b2: float, tau: float, bias: bool = False) -> list[float]:
    # the paper starts v at τ²; with bias correction v starts at 0, as in Kingma & Ba's Adam
    x, m, v, out = 1.0, 0.0, 0.0 if bias else tau**2, []
    for t, d in enumerate(DELTAS, start=1):
        m = b1 * m + (1 - b1) * d
        if kind == "adagrad":
            v = v + d * d
        elif kind == "adam":
            v = b2 * v + (1 - b2) * d * d
        else:
            v = v - (1 - b2) * d * d * math.copysign(1.0, v - d * d)
        mh, vh = (m / (1 - b1**t), v / (1 - b2**t)) if bias else (m, v)
        x = x + eta * mh / (math.sqrt(vh) + tau)
        out.append(x)
    return out


@pytest.mark.parametrize(
    ("kind", "bias"), [("adagrad", False), ("adam", False), ("adam", True), ("yogi", False), ("yogi", True)]
)
def test_adaptive_optimizers_match_the_paper(kind, bias):
    config = {"eta": 0.05, "beta1": 0.8, "tau": 0.01}
    if kind != "adagrad":  # fedadagrad refuses the options it has no use for
        config |= {"beta2": 0.95, "bias_correction": bias}
    got = _run(f"fed{kind}", config)
    np.testing.assert_allclose(got, _by_hand(kind, 0.05, 0.8, 0.95, 0.01, bias), rtol=1e-12)


def test_fedavgm_matches_by_hand_and_equals_fedavg_without_momentum():
    x, m, want = 1.0, 0.0, []
    for d in DELTAS:
        m = 0.7 * m + d
        x = x + 0.5 * m
        want.append(x)
    np.testing.assert_allclose(_run("fedavgm", {"eta": 0.5, "momentum": 0.7}), want, rtol=1e-12)
    np.testing.assert_allclose(_run("fedavgm", {"eta": 1.0, "momentum": 0.0}), _run("fedavg", {}), rtol=1e-12)
    np.testing.assert_allclose(_run("fedavg", {}), np.cumsum([1.0, *DELTAS])[1:], rtol=1e-6)


@pytest.mark.parametrize(
    ("name", "config"),
    [(name, {}) for name in sorted(SERVER_OPTIMIZERS)]
    + [("fedadam", {"bias_correction": True}), ("fedyogi", {"bias_correction": True})],
)
def test_saved_state_continues_exactly(name, config):
    rng = np.random.default_rng(0)
    models = [{"w": rng.standard_normal((3, 2))} for _ in range(5)]
    straight = make_server_optimizer(name, config)
    x = {"w": np.zeros((3, 2))}
    for m in models:
        x = straight.step(x, m)
    resumed = make_server_optimizer(name, config)
    y = {"w": np.zeros((3, 2))}
    for m in models[:2]:
        y = resumed.step(y, m)
    assert set(resumed.state_arrays()) <= {"m/w", "v/w"}  # the stored format: "kind/tensor"
    again = make_server_optimizer(name, config)
    again.load_state(resumed.state_arrays(), resumed.step_count)
    for m in models[2:]:
        y = again.step(y, m)
    np.testing.assert_array_equal(x["w"], y["w"])


@pytest.mark.parametrize(
    ("name", "config", "match"),
    [
        ("fedmagic", {}, "unknown strategy"),
        ("fedadam", {"eta": -0.1}, "eta"),
        ("fedadam", {"beta1": 1.0}, "beta1"),
        ("fedyogi", {"beta2": -0.5}, "beta2"),
        ("fedadagrad", {"tau": 0}, "tau"),
        ("fedavgm", {"momentum": 1.5}, "momentum"),
        ("fedadam", {"learning_rate": 0.1}, "learning_rate"),
    ],
)
def test_bad_strategy_configs_are_refused(name, config, match):
    with pytest.raises(InvalidArgument, match=match):
        make_server_optimizer(name, config)


def test_fedprox_averages_like_fedavg_and_sends_mu_to_clients():
    np.testing.assert_allclose(_run("fedprox", {"mu": 0.1}), _run("fedavg", {}), rtol=1e-12)
    assert make_server_optimizer("fedprox", {"mu": 0.1}).client_config() == {"mu": 0.1}
    assert make_server_optimizer("fedadam", {"eta_l": 0.05}).client_config() == {"lr": 0.05}
    assert make_server_optimizer("fedavg").client_config() == {}
    with pytest.raises(InvalidArgument, match="mu"):
        make_server_optimizer("fedprox", {"mu": -1})


@pytest.mark.parametrize("name", ["fedadam", "fedyogi"])
def test_bias_correction_is_kingmas(name):
    # Kingma & Ba: m and v start at 0 and are divided by 1 - β^t, so the first step is
    # η·Δ/(|Δ| + τ) whatever β1, β2; the paper's v₀ = τ² would shrink it
    eta, tau, delta = 0.1, 0.5, 0.2
    opt = make_server_optimizer(name, {"eta": eta, "tau": tau, "beta1": 0.9, "beta2": 0.99, "bias_correction": True})
    new = opt.step({"w": np.zeros(1)}, {"w": np.full(1, delta)})
    assert float(new["w"][0]) == pytest.approx(eta * delta / (delta + tau), rel=1e-12)


@pytest.mark.parametrize("option", [{"beta2": 0.9}, {"bias_correction": True}, {"bias_correction": False}])
def test_fedadagrad_refuses_options_it_ignores(option):
    (key,) = option
    with pytest.raises(InvalidArgument, match=key):
        make_server_optimizer("fedadagrad", option)
    make_server_optimizer("fedadam", option)  # Adam and Yogi take them
    make_server_optimizer("fedyogi", option)
