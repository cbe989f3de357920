"""Simulate thousands of clients on one machine with the real client class and aggregation code."""

from fedn.sim.engine import RoundMetrics, Simulation, SimulationResult
from fedn.sim.output import write_outputs
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
