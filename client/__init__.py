"""fedn's client tier: the SDK users subclass, PyTorch helpers, and the runtime behind ``fedn client start``.

The runtime (gRPC) is imported when first used: ``fedn`` loads every tier's ``cli`` (and so this
package) to parse its flags, and the reducer or a combiner must not pay for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from client.sdk import Client, EvaluateResult, TrainResult

if TYPE_CHECKING:
    from client.runtime import ClientRuntime, check_train_result

__all__ = ["Client", "ClientRuntime", "EvaluateResult", "TrainResult", "check_train_result"]

_MODULES = {"ClientRuntime": "client.runtime", "check_train_result": "client.runtime"}


def __getattr__(name: str) -> object:
    if name in _MODULES:
        return getattr(importlib.import_module(_MODULES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
