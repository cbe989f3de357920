"""fedn's combiner tier: serves a share of the clients and aggregates their updates partially.

Names are imported when first used: ``fedn`` loads every tier's ``cli`` (and so this package) to parse
its flags, and a client or the reducer must not pay for the combiner's modules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from combiner.router import RunRouter
    from combiner.run import Run, RunContext
    from combiner.server import CombinerServer
    from combiner.settings import CombinerSettings

__all__ = ["CombinerServer", "CombinerSettings", "Run", "RunContext", "RunRouter"]

_MODULES = {
    "CombinerServer": "combiner.server",
    "CombinerSettings": "combiner.settings",
    "Run": "combiner.run",
    "RunContext": "combiner.run",
    "RunRouter": "combiner.router",
}


def __getattr__(name: str) -> object:
    if name in _MODULES:
        return getattr(importlib.import_module(_MODULES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
