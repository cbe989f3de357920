"""The Flower quickstart's client, as Flower users write it: no fedn import anywhere.

Softmax regression in numpy on scikit-learn's bundled digits (no download), one share per partition.
Run it with fedn: ``fedn local --flower examples.flower.quickstart:client_fn --clients 4 --rounds 3``.
With ``flwr`` installed the class can subclass ``flwr.client.NumPyClient``; the shape is all fedn needs.
"""

from __future__ import annotations

import numpy as np


def load_data(partition_id: int, num_partitions: int) -> tuple[np.ndarray, ...]:
    """This partition's share of the digits, split 80/20 into train and test."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    idx = np.random.default_rng(0).permutation(len(y))[partition_id::num_partitions]
    cut = int(0.8 * len(idx))
    return x[idx[:cut]], y[idx[:cut]], x[idx[cut:]], y[idx[cut:]]


class DigitsNumPyClient:  # class DigitsNumPyClient(flwr.client.NumPyClient) works the same
    def __init__(self, data: tuple[np.ndarray, ...], local_epochs: int = 5, lr: float = 0.5) -> None:
        self.x_train, self.y_train, self.x_test, self.y_test = data
        self.w = np.zeros((64, 10), dtype=np.float32)
        self.b = np.zeros(10, dtype=np.float32)
        self.local_epochs, self.lr = local_epochs, lr

    def get_parameters(self, config):
        return [self.w, self.b]

    def set_parameters(self, parameters):
        self.w, self.b = (np.array(p, dtype=np.float32) for p in parameters)

    def _probs(self, x):
        z = x @ self.w + self.b
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def fit(self, parameters, config):
        self.set_parameters(parameters)
        onehot = np.eye(10, dtype=np.float32)[self.y_train]
        for _ in range(int(config.get("local_epochs", self.local_epochs))):
            grad = (self._probs(self.x_train) - onehot) / len(self.y_train)
            self.w -= self.lr * self.x_train.T @ grad
            self.b -= self.lr * grad.sum(axis=0)
        return self.get_parameters(config={}), len(self.x_train), {"train_loss": self._loss(self.x_train, self.y_train)}

    def evaluate(self, parameters, config):
        self.set_parameters(parameters)
        accuracy = float((self._probs(self.x_test).argmax(axis=1) == self.y_test).mean())
        return self._loss(self.x_test, self.y_test), len(self.x_test), {"accuracy": accuracy}

    def _loss(self, x, y) -> float:
        return float(-np.log(self._probs(x)[np.arange(len(y)), y] + 1e-12).mean())


def client_fn(context):
    """Flower's ``client_fn(context: Context)``: the partition comes from ``node_config``."""
    partition_id = context.node_config["partition-id"]
    num_partitions = context.node_config["num-partitions"]
    local_epochs = int(context.run_config.get("local-epochs", 5))
    return DigitsNumPyClient(load_data(partition_id, num_partitions), local_epochs=local_epochs)


def client_fn_cid(cid: str):
    """Flower's older ``client_fn(cid: str)``: one client per id, here one of four partitions."""
    return DigitsNumPyClient(load_data(int(cid) % 4, 4))
