"""fedn: three-tier federated learning (clients -> combiners -> reducer) on gRPC.

The ``fedn`` package is the shared core the tiers meet through: protocol stubs,
model codec and chunking, aggregation math, stores, config and the CLI.
"""

from fedn.codec import NamedArrays
from fedn.errors import FednError

__all__ = ["FednError", "NamedArrays", "__version__"]


def __getattr__(name: str) -> str:
    """``fedn.__version__``, read from the package metadata when first asked for: every process of a
    federation imports ``fedn``, few ask its version, and the metadata lookup costs each one's start."""
    if name != "__version__":
        raise AttributeError(f"module 'fedn' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        value = version("fedn")
    except PackageNotFoundError:  # running from a source tree that was never installed
        value = "0.0.0"
    globals()["__version__"] = value
    return value
