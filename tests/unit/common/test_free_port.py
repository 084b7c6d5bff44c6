"""Ports for daemons made before they start: free, below the ephemeral range, and never handed out twice."""

from __future__ import annotations

from chunkfs.common.daemon import _ephemeral_range, free_port


def test_a_port_is_not_handed_out_twice() -> None:
    # A cluster is made in one go (a dozen ports) before any daemon binds one: with ~20,000 ports to
    # pick from, 1,000 picks would repeat about 20 of them if nothing remembered the ones handed out.
    ports = [free_port() for _ in range(1000)]
    assert len(set(ports)) == len(ports)
    low, _ = _ephemeral_range()
    assert all(10000 <= p < max(10001, low) for p in ports)
