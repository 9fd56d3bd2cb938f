"""Ports handed to servers that bind them later: outside the range the OS gives outgoing connections."""

from __future__ import annotations

import socket
from pathlib import Path

from server.core.config import free_port, free_port_range


def _ephemeral_range() -> tuple[int, int]:
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return int(low), int(high)


def test_free_ports_lie_below_the_ephemeral_range_are_distinct_and_bindable():
    low, _ = _ephemeral_range()
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert max(ports) < low
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))


def test_a_range_is_never_handed_out_twice_and_skips_a_bound_port():
    first = free_port_range(50)
    with socket.socket() as held:
        held.bind(("127.0.0.1", first + 60))
        for _ in range(100):
            start = free_port_range(20)
            assert not (first - 20 < start < first + 50)  # no overlap with the first range
            assert not (start <= first + 60 < start + 20)  # never a range holding the bound port
