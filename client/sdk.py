"""The client SDK: subclass :class:`Client`, implement ``train`` and ``evaluate``.

The same class runs unchanged under ``fedn client start`` and ``fedn local``;
nothing in it knows about gRPC. Parameters are named numpy arrays (``dict[str, ndarray]``);
the PyTorch helpers in :mod:`client.pytorch` convert a ``state_dict``.
"""

from __future__ import annotations

from fedn.codec import NamedArrays
from fedn.records import ConfigScalar

__all__ = ["Client", "EvaluateResult", "TrainResult"]

TrainResult = tuple[NamedArrays, int, dict[str, float]]
EvaluateResult = tuple[float, int, dict[str, float]]


class Client:
    """Base class of user clients.

    ``train`` returns ``(params, num_examples, metrics)``: the updated
    parameters (same names, shapes and dtypes as received), the number of
    examples they were trained on (the aggregation weight) and scalar metrics
    (``train_loss`` is shown per round). ``evaluate`` returns
    ``(loss, num_examples, metrics)``. ``config`` holds the session's config
    (e.g. ``epochs``, ``lr``) plus ``round`` (1-based round index).

    An exception raised by ``train`` is reported to the combiner as this
    client's failure for the round, with its text; the client stays connected.
    """

    def initial_parameters(self) -> NamedArrays:
        """A freshly initialised model, used to seed a session (``fedn model upload --client``)."""
        raise NotImplementedError(f"{type(self).__name__} does not define initial_parameters()")

    def train(self, params: NamedArrays, config: dict[str, ConfigScalar]) -> TrainResult:
        raise NotImplementedError(f"{type(self).__name__} does not define train()")

    def evaluate(self, params: NamedArrays, config: dict[str, ConfigScalar]) -> EvaluateResult:
        raise NotImplementedError(f"{type(self).__name__} does not define evaluate()")
