"""Session-wide test servers: started once, on demand, stopped at the end of the run."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from hypothesis import settings

from tests.store_servers import mongo_server, s3_server

# `make test` draws the same property-test examples every run, so it passes or fails on the code alone;
# `make fuzz` (HYPOTHESIS_PROFILE=fuzz) draws new ones each run, to find what the fixed draw does not.
settings.register_profile("repeatable", derandomize=True, print_blob=True)
settings.register_profile("fuzz", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


@pytest.fixture(scope="session")
def mongo_base_url(tmp_path_factory) -> Iterator[str]:
    with mongo_server(tmp_path_factory.mktemp("mongo")) as url:
        yield url


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory) -> Iterator[tuple[str, str, str]]:
    with s3_server(tmp_path_factory.mktemp("s3")) as endpoint:
        yield endpoint


@pytest.fixture
def mongo_url(mongo_base_url: str) -> str:
    """A fresh database on the shared server for each test."""
    return mongo_base_url.replace("/fedn?", f"/t{secrets.token_hex(6)}?")


@pytest.fixture
def s3_url(s3_endpoint: tuple[str, str, str]) -> str:
    """A fresh bucket on the shared server for each test."""
    endpoint, access, secret = s3_endpoint
    return f"s3://{quote(access, safe='')}:{quote(secret, safe='')}@{endpoint}/t{secrets.token_hex(6)}"


@pytest.fixture
def restore_root_logging() -> Iterator[None]:
    """`fedn.cli.main` points the root logger at the test's captured stderr; put it back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
