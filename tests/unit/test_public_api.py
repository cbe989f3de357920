"""Each package declares __all__, and every __all__ (package or module) names things that exist."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

PACKAGES = ["fedn", "reducer", "combiner", "client"]


def _modules():
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        yield package_name
        for info in pkgutil.walk_packages(package.__path__, prefix=package_name + "."):
            if ".v1" in info.name or info.name.endswith("__main__") or info.name.split(".")[-1].startswith("_"):
                continue
            yield info.name


@pytest.mark.parametrize("name", list(_modules()))
def test_all_names_exist(name):
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    if exported is None:
        assert not hasattr(module, "__path__"), f"package {name} has no __all__"
        return
    missing = [n for n in exported if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ lists missing names {missing}"
