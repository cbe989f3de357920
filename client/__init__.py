"""fedn's client tier: the SDK users subclass, PyTorch helpers, and the runtime behind ``fedn client start``."""

from client.sdk import Client, EvaluateResult, TrainResult

__all__ = ["Client", "EvaluateResult", "TrainResult"]
