"""fedn's client tier: the SDK users subclass, PyTorch helpers, and the runtime behind ``fedn client start``."""

from client.runtime import ClientRuntime, check_train_result
from client.sdk import Client, EvaluateResult, TrainResult

__all__ = ["Client", "ClientRuntime", "EvaluateResult", "TrainResult", "check_train_result"]
