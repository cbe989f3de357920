"""The one error hierarchy of fedn.

Each class carries the gRPC status and HTTP status it maps to, so servers map
errors in one place (a gRPC decorator, a Flask error handler)::

    FednError                       500 / INTERNAL
    ├── InvalidArgument             400 / INVALID_ARGUMENT   bad request values
    │   ├── InvalidModel            400 / INVALID_ARGUMENT   malformed model, wrong names/shapes/dtypes
    │   ├── NonFiniteValues         400 / INVALID_ARGUMENT   NaN or Inf in an update
    │   └── ChecksumMismatch        400 / DATA_LOSS          payload does not match its sha256
    ├── PayloadTooLarge             413 / RESOURCE_EXHAUSTED update over the configured limit
    ├── NotFound                    404 / NOT_FOUND          unknown session, round, model, ...
    ├── Conflict                    409 / ALREADY_EXISTS     duplicate update, existing id
    ├── FailedPrecondition          409 / FAILED_PRECONDITION round closed or not for this combiner
    ├── Unavailable                 503 / UNAVAILABLE        no live combiner, peer unreachable
    └── StoreError                  503 / UNAVAILABLE        a backing store failed
"""

from __future__ import annotations

import grpc
from pydantic import ValidationError

__all__ = [
    "ChecksumMismatch",
    "Conflict",
    "FailedPrecondition",
    "FednError",
    "InvalidArgument",
    "InvalidModel",
    "NonFiniteValues",
    "NotFound",
    "PayloadTooLarge",
    "StoreError",
    "Unavailable",
    "validation_problem",
]


class FednError(Exception):
    """Root of every error fedn raises on purpose."""

    grpc_status: grpc.StatusCode = grpc.StatusCode.INTERNAL
    http_status: int = 500
    title: str = "internal error"

    def __init__(self, message: str, *, detail: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class InvalidArgument(FednError):
    grpc_status = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400
    title = "invalid argument"


class InvalidModel(InvalidArgument):
    title = "invalid model"


class NonFiniteValues(InvalidArgument):
    title = "non-finite values"


class ChecksumMismatch(InvalidArgument):
    grpc_status = grpc.StatusCode.DATA_LOSS
    title = "checksum mismatch"


class PayloadTooLarge(FednError):
    grpc_status = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 413
    title = "payload too large"


class NotFound(FednError):
    grpc_status = grpc.StatusCode.NOT_FOUND
    http_status = 404
    title = "not found"


class Conflict(FednError):
    grpc_status = grpc.StatusCode.ALREADY_EXISTS
    http_status = 409
    title = "conflict"


class FailedPrecondition(FednError):
    grpc_status = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 409
    title = "failed precondition"


class Unavailable(FednError):
    grpc_status = grpc.StatusCode.UNAVAILABLE
    http_status = 503
    title = "unavailable"


def validation_problem(exc: ValidationError, context: str = "") -> InvalidArgument:
    """One InvalidArgument listing every problem pydantic found, each as ``field: message``."""
    problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
    return InvalidArgument(f"{context}: {problems}" if context else problems)


class StoreError(FednError):
    grpc_status = grpc.StatusCode.UNAVAILABLE
    http_status = 503
    title = "store error"
