"""``module:Name`` references to user code (client classes, label functions), resolved in one place.

The CLI, the client runtime and the simulator's driver and workers all name user code this way, so
a bad reference fails with the same message wherever it is given.
"""

from __future__ import annotations

import importlib
import os
import sys

from fedn.errors import InvalidArgument

__all__ = ["load_object"]


def _search_working_directory() -> None:
    """User code is named from the working directory, as under ``python -m``.

    The ``fedn`` script's sys.path lacks it. Appended, so a file here never shadows an installed module.
    """
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.append(cwd)


def load_object(spec: str) -> object:
    """Import ``module:attribute``; InvalidArgument with the reason when it cannot."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise InvalidArgument(f"{spec!r} is not of the form module:Class")
    _search_working_directory()
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidArgument(f"cannot import {module_name!r}: {exc}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise InvalidArgument(f"module {module_name!r} has no attribute {attr!r}") from None
