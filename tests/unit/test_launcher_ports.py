"""The launcher never hands one port to two of its processes (they start together)."""

from __future__ import annotations

import fedn.launcher as launcher
from fedn.launcher import FederationSpec, LocalFederation


def test_a_port_the_os_offers_again_is_not_handed_out_twice(monkeypatch):
    offered = iter([5000, 5000, 5000, 5001])  # the reducer had not bound 5000 yet when asked again
    monkeypatch.setattr(launcher, "free_port", lambda host="127.0.0.1": next(offered))
    fed = LocalFederation(FederationSpec(client="x:Y"))
    assert [fed._free_port(), fed._free_port()] == [5000, 5001]
