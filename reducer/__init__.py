"""fedn's reducer tier: sessions and rounds, client assignment, the global merge and the REST API.

Names are imported when first used: ``fedn`` loads every tier's ``cli`` (and so this package) to parse
its flags, and a client or combiner process must not pay for Flask.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reducer.app import create_app
    from reducer.controller import Controller
    from reducer.registry import CombinerRegistry
    from reducer.server import ReducerServer
    from reducer.settings import ReducerSettings

__all__ = ["CombinerRegistry", "Controller", "ReducerServer", "ReducerSettings", "create_app"]

_MODULES = {
    "CombinerRegistry": "reducer.registry",
    "Controller": "reducer.controller",
    "ReducerServer": "reducer.server",
    "ReducerSettings": "reducer.settings",
    "create_app": "reducer.app",
}


def __getattr__(name: str) -> object:
    if name in _MODULES:
        return getattr(importlib.import_module(_MODULES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
