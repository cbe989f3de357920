"""``module:Name`` references to user code (client classes, label functions), resolved in one place.

The CLI, the client runtime and the simulator's driver and workers all name user code this way, so
a bad reference fails with the same message wherever it is given.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Mapping

from fedn.errors import InvalidArgument

__all__ = ["FLOWER_ADAPTER", "construct", "flower_client", "load_object"]

# the client tier's adapter, named (never imported: fedn imports no tier) for the processes that load it
FLOWER_ADAPTER = "client.flower:FlowerClient"

logger = logging.getLogger(__name__)


def _search_working_directory() -> None:
    """User code is named from the working directory first, as in every process ``fedn local`` starts.

    The ``fedn`` script's sys.path lacks it; the children get it first on ``PYTHONPATH``. The parent
    must resolve ``module:Class`` the same way, or its check and the children disagree on which
    ``module`` that is (a ``client.py`` here against fedn's own ``client`` package, say).
    """
    cwd = os.getcwd()
    if sys.path[:1] not in ([cwd], [""]):
        while cwd in sys.path:
            sys.path.remove(cwd)
        sys.path.insert(0, cwd)
        importlib.invalidate_caches()


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
    except Exception as exc:  # the module's own error as it runs (SyntaxError, ...), or a relative ".name"
        logger.debug("importing %s failed", module_name, exc_info=True)
        raise InvalidArgument(f"cannot import {module_name!r}: {type(exc).__name__}: {str(exc)[:1000]}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise InvalidArgument(f"module {module_name!r} has no attribute {attr!r}") from None


def construct(cls: object, spec: str, kwargs: Mapping[str, object]) -> object:
    """``cls(**kwargs)``; InvalidArgument naming ``spec`` and the error when the user's constructor raises.

    The traceback goes to the log at DEBUG: it is the user's code, and the caller gets one line.
    """
    if not callable(cls):
        raise InvalidArgument(f"{spec} is not a class")
    try:
        return cls(**kwargs)
    except Exception as exc:
        logger.debug("creating %s failed", spec, exc_info=True)
        raise InvalidArgument(f"cannot create {spec}: {type(exc).__name__}: {exc}") from None


def flower_client(flower: str, client_args: list[str]) -> tuple[str, list[str]]:
    """``--flower module:client_fn`` as ``--client`` and ``--client-arg`` values: the adapter, given the function.

    ``fedn local`` and ``fedn simulate`` pass these on, so every client process and worker runs the
    adapter as it runs any client class. InvalidArgument now if ``flower`` is not a reference.
    """
    load_object(flower)
    return FLOWER_ADAPTER, [f"flower={flower}", *client_args]
