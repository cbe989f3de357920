"""The one error hierarchy of fedn.

Each class carries the gRPC status and HTTP status it maps to, so servers map
errors in one place (a gRPC decorator, a Flask error handler)::

    FednError                       500 / INTERNAL
    ├── InvalidArgument             400 / INVALID_ARGUMENT   bad request values
    │   ├── InvalidModel            400 / INVALID_ARGUMENT   malformed model, wrong names/shapes/dtypes
    │   ├── NonFiniteValues         400 / INVALID_ARGUMENT   NaN or Inf in an update
    │   └── ChecksumMismatch        400 / DATA_LOSS          payload does not match its sha256
    ├── PayloadTooLarge             413 / RESOURCE_EXHAUSTED update over the configured limit
    ├── ResourceExhausted           429 / RESOURCE_EXHAUSTED a server at a capacity limit (e.g. clients)
    ├── Unauthenticated             401 / UNAUTHENTICATED    no credential, or a bad/expired/revoked one
    ├── PermissionDenied            403 / PERMISSION_DENIED  the caller's role or identity may not do this
    ├── NotFound                    404 / NOT_FOUND          unknown session, round, model, ...
    ├── Conflict                    409 / ALREADY_EXISTS     duplicate update, existing id
    ├── FailedPrecondition          409 / FAILED_PRECONDITION round closed or not for this combiner
    ├── Unavailable                 503 / UNAVAILABLE        no live combiner, peer unreachable
    │   └── DeadlineExceeded        504 / DEADLINE_EXCEEDED  a peer did not answer in time
    └── StoreError                  503 / UNAVAILABLE        a backing store failed

What arrives from a peer as a status is turned back into the class above by
:func:`error_from_grpc` and :func:`error_from_http`, so a client keeps the meaning the server gave.
"""

from __future__ import annotations

import grpc
from pydantic import ValidationError

__all__ = [
    "ChecksumMismatch",
    "Conflict",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FednError",
    "InvalidArgument",
    "InvalidModel",
    "NonFiniteValues",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "ResourceExhausted",
    "StoreError",
    "Unauthenticated",
    "Unavailable",
    "error_from_grpc",
    "error_from_http",
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


class ResourceExhausted(FednError):
    grpc_status = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 429
    title = "resource exhausted"


class Unauthenticated(FednError):
    grpc_status = grpc.StatusCode.UNAUTHENTICATED
    http_status = 401
    title = "unauthenticated"


class PermissionDenied(FednError):
    grpc_status = grpc.StatusCode.PERMISSION_DENIED
    http_status = 403
    title = "permission denied"


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


class DeadlineExceeded(Unavailable):
    grpc_status = grpc.StatusCode.DEADLINE_EXCEEDED
    http_status = 504
    title = "deadline exceeded"


def validation_problem(exc: ValidationError, context: str = "") -> InvalidArgument:
    """One InvalidArgument listing every problem pydantic found, each as ``field: message``."""
    problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
    return InvalidArgument(f"{context}: {problems}" if context else problems)


class StoreError(FednError):
    grpc_status = grpc.StatusCode.UNAVAILABLE
    http_status = 503
    title = "store error"


# Where several classes share a status, the most general one stands for it.
_PEER_ERRORS: tuple[type[FednError], ...] = (
    InvalidArgument,
    ChecksumMismatch,
    PayloadTooLarge,
    Unauthenticated,
    PermissionDenied,
    NotFound,
    Conflict,
    FailedPrecondition,
    Unavailable,
    DeadlineExceeded,
)


def error_from_grpc(code: grpc.StatusCode, message: str) -> FednError:
    """The error a peer meant by ``code``; a status with no class of its own is a plain FednError
    (INTERNAL), except CANCELLED, which is Unavailable (the call did not complete)."""
    for cls in _PEER_ERRORS:
        if cls.grpc_status == code:
            return cls(message)
    if code == grpc.StatusCode.CANCELLED:
        return Unavailable(message)
    return FednError(message)


def error_from_http(status: int, message: str) -> FednError:
    """The error a server meant by HTTP ``status`` (409 is Conflict; 5xx without a class is FednError)."""
    for cls in _PEER_ERRORS:
        if cls.http_status == status:
            return cls(message)
    return InvalidArgument(message) if 400 <= status < 500 else FednError(message)
