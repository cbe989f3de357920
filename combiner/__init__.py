"""fedn's combiner tier: serves a share of the clients and aggregates their updates partially."""

from combiner.router import RunRouter
from combiner.run import Run, RunContext
from combiner.server import CombinerServer
from combiner.settings import CombinerSettings

__all__ = ["CombinerServer", "CombinerSettings", "Run", "RunContext", "RunRouter"]
