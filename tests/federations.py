"""A federation of processes for a test: started with its clients, and checked to leave nothing running."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from fedn.launcher import FederationSpec, LocalFederation


@contextlib.contextmanager
def serving(spec: FederationSpec) -> Iterator[LocalFederation]:
    """The reducer, combiners and clients of ``spec``, running; afterwards every process has stopped."""
    fed = LocalFederation(spec)
    fed.start()
    try:
        fed.start_clients()
        yield fed
    finally:
        fed.stop()
        assert all(not p.is_running() for p in fed.processes)
