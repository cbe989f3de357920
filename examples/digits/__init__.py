"""Digits example: run it with ``fedn local --client examples.digits:DigitsClient``."""

from examples.digits.client import DigitsClient

__all__ = ["DigitsClient"]
