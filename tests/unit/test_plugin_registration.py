"""The example plug-in is not registered by installing fedn; a package of one's own registers it.

User code is named ``module:Class`` from the working directory (``make demo`` runs
``examples.digits:DigitsClient`` from a clone), whether fedn runs as ``python -m fedn`` or as the
``fedn`` console script, whose ``sys.path`` does not hold the working directory.
"""

from __future__ import annotations

import sys
from importlib.metadata import distribution
from pathlib import Path

import numpy as np
import pytest

import fedn.aggregation as aggregation
from fedn.aggregation import make_aggregator
from fedn.codec import manifest_of
from fedn.errors import InvalidArgument
from fedn.loading import load_object
from tests.plugin_dist import write_plugin_dist


def test_installing_fedn_registers_no_plug_in():
    groups = {ep.group for ep in distribution("fedn").entry_points}
    assert groups == {"console_scripts", "fedn.commands"}


def test_a_distribution_on_the_path_registers_the_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    aggregation._aggregators.cache_clear()
    try:
        with pytest.raises(InvalidArgument, match="unknown aggregator"):
            aggregation.get_aggregator("clipped_mean")
        monkeypatch.syspath_prepend(str(write_plugin_dist(tmp_path)))
        aggregation._aggregators.cache_clear()
        agg = make_aggregator("clipped_mean", manifest_of({"w": np.zeros(4, np.float32)}), {"max_norm": 2.0})
        agg.add({"w": np.full(4, 100.0, np.float32)}, 1.0)
        np.testing.assert_allclose(agg.partial().arrays["w"], np.full(4, 1.0))
    finally:
        aggregation._aggregators.cache_clear()


def test_user_code_in_the_working_directory_is_found_without_it_on_sys_path(tmp_path: Path, monkeypatch):
    (tmp_path / "my_fl_client_mod.py").write_text("class MyClient:\n    pass\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    cls = load_object("my_fl_client_mod:MyClient")
    assert cls.__name__ == "MyClient" and sys.path[0] == str(tmp_path)  # first, as on the children's PYTHONPATH
    monkeypatch.delitem(sys.modules, "my_fl_client_mod")


def test_installed_modules_win_over_the_working_directory(tmp_path: Path, monkeypatch):
    (tmp_path / "json.py").write_text("raise RuntimeError('shadowed')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert callable(load_object("json:dumps"))
