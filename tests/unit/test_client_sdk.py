"""PyTorch helpers and the validation of what train() returns."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from client import check_train_result
from client.pytorch import load_arrays, state_dict_to_arrays
from fedn.codec import manifest_of


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))


def test_state_dict_round_trip_includes_buffers():
    src, dst = _model(), _model()
    with torch.no_grad():
        for p in src.parameters():
            p.add_(1.0)
    arrays = state_dict_to_arrays(src)
    assert "1.running_mean" in arrays and arrays["1.num_batches_tracked"].dtype == np.int64
    load_arrays(dst, arrays)
    for k, v in dst.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), arrays[k])


def test_load_arrays_names_the_problem():
    arrays = state_dict_to_arrays(_model())
    arrays["0.weight"] = np.zeros((9, 9), np.float32)
    del arrays["2.bias"]
    with pytest.raises(ValueError, match=r"missing \['2.bias'\].*0.weight"):
        load_arrays(_model(), arrays)


def test_check_train_result_reorders_and_casts():
    params = {"a": np.zeros(2, np.float32), "b": np.zeros((1, 2), np.float32)}
    manifest = manifest_of(params)
    out, weight, metrics = check_train_result(
        ({"b": np.ones((1, 2)), "a": np.ones(2)}, 3, {"loss": np.float32(1)}), manifest
    )
    assert list(out) == ["a", "b"] and out["a"].dtype == np.float32 and weight == 3.0 and metrics == {"loss": 1.0}


@pytest.mark.parametrize(
    ("result", "match"),
    [
        (None, "must return"),
        (({"a": np.zeros(2, np.float32)}, 1, {}), "missing"),
        (({"a": np.zeros(2, np.float32), "c": np.zeros((1, 2), np.float32)}, 1, {}), r"missing \['b'\], extra \['c'\]"),
        (
            ({"a": np.zeros(2), "b": np.zeros((1, 2)), 7: np.zeros(1), "z": 0}, 1, {}),
            r"missing \[\], extra \['7', 'z'\]",
        ),
        (({"a": np.zeros(3, np.float32), "b": np.zeros((1, 2), np.float32)}, 1, {}), "shape"),
        (({"a": np.zeros(2, np.int32), "b": np.zeros((1, 2), np.float32)}, 1, {}), "dtype"),
        (({"a": np.zeros(2, np.float32), "b": np.zeros((1, 2), np.float32)}, 0, {}), "positive"),
        (({"a": np.zeros(2, np.float32), "b": np.zeros((1, 2), np.float32)}, 1, {"x": "high"}), "metrics"),
    ],
)
def test_check_train_result_rejects(result, match):
    manifest = manifest_of({"a": np.zeros(2, np.float32), "b": np.zeros((1, 2), np.float32)})
    with pytest.raises(ValueError, match=match):
        check_train_result(result, manifest)
