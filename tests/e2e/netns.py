"""Test hosts as Linux network namespaces on a private subnet this test creates (root only).

A bridge in the test's own namespace joins one veth pair per host, so the test itself can reach
every host, and the hosts reach each other only through that subnet.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["network_hosts", "skip_reason"]


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is missing"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@contextmanager
def network_hosts(names: list[str]) -> Iterator[dict[str, tuple[str, str]]]:
    """Yield ``{name: (namespace, address)}``; everything is removed on exit."""
    tag = secrets.token_hex(2)
    octet = 200 + int(tag, 16) % 50  # 10.250.<octet>.0/24, unlikely to collide between runs
    subnet = f"10.250.{octet}"
    bridge = f"fbr{tag}"
    made_ns: list[str] = []
    hosts: dict[str, tuple[str, str]] = {}
    try:
        _ip("link", "add", "name", bridge, "type", "bridge")
        _ip("addr", "add", f"{subnet}.254/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for i, name in enumerate(names, start=1):
            ns = f"fedn-{tag}-{i}"
            _ip("netns", "add", ns)
            made_ns.append(ns)
            outer, inner = f"fv{tag}{i}o", f"fv{tag}{i}i"
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", ns)
            _ip("link", "set", outer, "master", bridge)
            _ip("link", "set", outer, "up")
            address = f"{subnet}.{i}"
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", inner)
            _ip("-n", ns, "link", "set", inner, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            hosts[name] = (ns, address)
        yield hosts
    finally:
        for ns in made_ns:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, timeout=10)
