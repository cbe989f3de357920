"""fedn's reducer tier: sessions and rounds, client assignment, the global merge and the REST API."""

from reducer.app import create_app
from reducer.controller import Controller
from reducer.registry import CombinerRegistry
from reducer.server import ReducerServer
from reducer.settings import ReducerSettings

__all__ = ["CombinerRegistry", "Controller", "ReducerServer", "ReducerSettings", "create_app"]
