"""Statuses from peers map back to the error classes that carry them, for gRPC and HTTP alike."""

from __future__ import annotations

import grpc
import httpx
import pytest

from fedn import errors
from fedn.api_client import ReducerAPI

_CLASSES = [
    errors.InvalidArgument,
    errors.ChecksumMismatch,
    errors.PayloadTooLarge,
    errors.NotFound,
    errors.FailedPrecondition,
    errors.Unavailable,
    errors.DeadlineExceeded,
]


@pytest.mark.parametrize("cls", _CLASSES)
def test_a_grpc_status_maps_back_to_a_class_with_that_status(cls):
    error = errors.error_from_grpc(cls.grpc_status, "boom")
    assert error.grpc_status == cls.grpc_status
    assert isinstance(error, errors.FednError)
    assert error.message == "boom"


def test_unknown_and_internal_grpc_statuses_stay_internal_and_cancelled_is_unavailable():
    assert type(errors.error_from_grpc(grpc.StatusCode.INTERNAL, "x")) is errors.FednError
    assert type(errors.error_from_grpc(grpc.StatusCode.UNKNOWN, "x")) is errors.FednError
    assert isinstance(errors.error_from_grpc(grpc.StatusCode.CANCELLED, "x"), errors.Unavailable)
    assert isinstance(errors.error_from_grpc(grpc.StatusCode.DEADLINE_EXCEEDED, "x"), errors.Unavailable)


def _api(status: int, body: object) -> ReducerAPI:
    api = ReducerAPI("http://reducer.invalid")
    api._http = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(status, json=body)))
    return api


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, errors.InvalidArgument),
        (404, errors.NotFound),
        (409, errors.Conflict),
        (413, errors.PayloadTooLarge),
        (503, errors.Unavailable),
        (504, errors.DeadlineExceeded),
        (500, errors.FednError),
    ],
)
def test_the_http_client_derives_its_error_from_the_status(status, cls):
    with pytest.raises(errors.FednError) as raised, _api(status, {"error": "nope", "detail": "why"}) as api:
        api.get_session("s1")
    assert type(raised.value) is cls
    assert raised.value.http_status == status
    assert "why" in raised.value.message
