"""fedn's combiner tier: serves a share of the clients and aggregates their updates partially."""

from combiner.rounds import RoundService
from combiner.server import CombinerServer
from combiner.settings import CombinerSettings

__all__ = ["CombinerServer", "CombinerSettings", "RoundService"]
