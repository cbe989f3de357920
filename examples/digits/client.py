"""The demo's client: an MLP on one label-skewed share of scikit-learn's digits."""

from __future__ import annotations

import torch

from client import Client, EvaluateResult, TrainResult
from client.pytorch import evaluate_model, load_arrays, state_dict_to_arrays, train_epochs
from examples.digits.data import load_held_out, load_partition, load_test_set
from examples.digits.model import DigitsMLP
from fedn.codec import NamedArrays
from fedn.records import ConfigScalar

__all__ = ["DigitsClient"]


class DigitsClient(Client):
    """``split="train"`` trains on partition ``partition`` of ``num_partitions``, split by ``partitioner``
    (``dirichlet`` over labels with ``alpha``, ``iid``, ``shard`` or ``quantity``; see :mod:`fedn.partition`);
    ``split="test"`` evaluates on the whole held-out set (a central evaluator). A training client evaluates on
    its own share of the held-out set (:func:`~examples.digits.data.load_held_out`), never trained on.

    Round config keys: ``epochs`` (default 5), ``lr`` (0.1), ``batch_size`` (32), ``mu`` (FedProx, 0).
    """

    def __init__(
        self,
        partition: int = 0,
        num_partitions: int = 1,
        alpha: float = 0.5,
        seed: int = 0,
        split: str = "train",
        hidden: int = 64,
        partitioner: str = "dirichlet",
    ) -> None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', not {split!r}")
        torch.set_num_threads(1)  # many client processes share a few cores
        self.seed = seed
        self.partition = partition
        if split == "test":
            x, y = x_eval, y_eval = load_test_set()
        else:
            x, y = load_partition(partition, num_partitions, alpha, seed, partitioner)
            x_eval, y_eval = load_held_out(partition, num_partitions, seed)
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)
        self.x_eval, self.y_eval = torch.from_numpy(x_eval), torch.from_numpy(y_eval)
        torch.manual_seed(seed)
        self.model = DigitsMLP(hidden)
        self._initial = state_dict_to_arrays(self.model)

    def initial_parameters(self) -> NamedArrays:
        return {k: v.copy() for k, v in self._initial.items()}

    def train(self, params: NamedArrays, config: dict[str, ConfigScalar]) -> TrainResult:
        load_arrays(self.model, params)
        round_index = int(config.get("round", 0))
        loss = train_epochs(
            self.model,
            self.x,
            self.y,
            epochs=int(config.get("epochs", 5)),
            lr=float(config.get("lr", 0.1)),
            batch_size=int(config.get("batch_size", 32)),
            seed=self.seed * 1000 + self.partition * 100 + round_index,
            mu=float(config.get("mu", 0.0)),
        )
        _, accuracy = evaluate_model(self.model, self.x, self.y)
        return state_dict_to_arrays(self.model), len(self.x), {"train_loss": loss, "train_accuracy": accuracy}

    def evaluate(self, params: NamedArrays, config: dict[str, ConfigScalar]) -> EvaluateResult:
        if len(self.y_eval) == 0:
            raise ValueError(f"partition {self.partition} has no held-out examples to evaluate on")
        load_arrays(self.model, params)
        loss, accuracy = evaluate_model(self.model, self.x_eval, self.y_eval)
        return loss, len(self.y_eval), {"accuracy": accuracy}
