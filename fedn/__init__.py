"""fedn: three-tier federated learning (clients -> combiners -> reducer) on gRPC.

The ``fedn`` package is the shared core the tiers meet through: protocol stubs,
model codec and chunking, aggregation math, stores, config and the CLI.
"""

from importlib.metadata import PackageNotFoundError, version

from fedn.codec import NamedArrays
from fedn.errors import FednError

try:
    __version__ = version("fedn")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["FednError", "NamedArrays", "__version__"]
