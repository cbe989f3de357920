"""PyTorch helpers: a module's ``state_dict`` to named numpy arrays and back, plus a plain training loop."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from fedn.codec import NamedArrays

__all__ = ["evaluate_model", "load_arrays", "proximal_term", "state_dict_to_arrays", "train_epochs"]


def state_dict_to_arrays(module: nn.Module) -> NamedArrays:
    """Parameters and buffers as CPU numpy copies, in ``state_dict`` order."""
    return {name: t.detach().cpu().numpy().copy() for name, t in module.state_dict().items()}


def load_arrays(module: nn.Module, arrays: Mapping[str, np.ndarray], *, strict: bool = True) -> None:
    """Load named arrays into ``module``; a ValueError names every missing, unexpected or misshapen key."""
    state = module.state_dict()
    missing = sorted(set(state) - set(arrays))
    unexpected = sorted(set(arrays) - set(state))
    wrong = [
        f"{k}: got {tuple(np.shape(arrays[k]))}, expected {tuple(state[k].shape)}"
        for k in state
        if k in arrays and tuple(np.shape(arrays[k])) != tuple(state[k].shape)
    ]
    if wrong or (strict and (missing or unexpected)):
        raise ValueError(
            f"parameters do not fit the model: missing {missing}, unexpected {unexpected}, shape mismatches {wrong}"
        )
    tensors = {k: torch.as_tensor(np.asarray(v)).to(state[k].dtype) for k, v in arrays.items() if k in state}
    module.load_state_dict(tensors, strict=strict)


def proximal_term(module: nn.Module, reference: Mapping[str, torch.Tensor], mu: float) -> torch.Tensor:
    """FedProx's ``mu/2 * ||w - w_global||^2`` over trainable parameters."""
    total = torch.zeros(())
    for name, p in module.named_parameters():
        total = total + (p - reference[name]).pow(2).sum()
    return 0.5 * mu * total


def train_epochs(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int = 1,
    lr: float = 0.05,
    batch_size: int = 32,
    seed: int = 0,
    mu: float = 0.0,
) -> float:
    """Plain SGD with momentum over ``(x, y)``; returns the mean cross-entropy of the last epoch.

    ``mu > 0`` adds FedProx's proximal term towards the starting weights.
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    reference = {n: p.detach().clone() for n, p in model.named_parameters()} if mu > 0 else None
    model.train()
    last = float("nan")
    for _ in range(max(1, int(epochs))):
        order = torch.randperm(len(x), generator=generator)
        total, count = 0.0, 0
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            if reference is not None:
                loss = loss + proximal_term(model, reference, mu)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        last = total / max(count, 1)
    return last


@torch.no_grad()
def evaluate_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)``."""
    model.eval()
    logits = model(x)
    loss = float(nn.functional.cross_entropy(logits, y))
    accuracy = float((logits.argmax(dim=1) == y).float().mean())
    return loss, accuracy
