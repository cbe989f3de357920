"""Simulate thousands of clients on one machine with the real client class and aggregation code."""

from fedn.sim.engine import Simulation
from fedn.sim.output import write_outputs
from fedn.sim.results import RoundMetrics, SimulationResult
from fedn.sim.spec import Heterogeneity, SimulationSpec, auto_workers, parse_spec

__all__ = [
    "Heterogeneity",
    "RoundMetrics",
    "Simulation",
    "SimulationResult",
    "SimulationSpec",
    "auto_workers",
    "parse_spec",
    "write_outputs",
]
