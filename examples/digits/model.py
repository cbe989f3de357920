"""A small MLP for 8x8 digit images."""

from __future__ import annotations

from torch import nn

__all__ = ["DigitsMLP"]


class DigitsMLP(nn.Sequential):
    def __init__(self, hidden: int = 64) -> None:
        super().__init__(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
