"""`free_port` chooses from ``$CHUNKFS_PORTS`` when set, and refuses a malformed range in one line."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest

from chunkfs.common import daemon
from chunkfs.common.config import ConfigError
from chunkfs.common.daemon import PORTS_ENV, free_port, port_range


def test_free_ports_come_from_the_range_given(monkeypatch: pytest.MonkeyPatch) -> None:
    # A range of 100, none handed out yet by this process: a CI run picked 5 of 10 ports of which this
    # worker had handed out some to earlier tests and the other worker's clusters held others.
    monkeypatch.setenv(PORTS_ENV, "23000-23099")
    monkeypatch.setattr(daemon, "_handed_out", collections.deque(maxlen=4096))
    assert port_range() == (23000, 23099)
    ports = {free_port() for _ in range(5)}
    assert len(ports) == 5 and all(23000 <= p <= 23099 for p in ports)


def test_without_the_variable_ports_are_below_the_ephemeral_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PORTS_ENV, raising=False)
    low, high = port_range()
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert low == 10000 and high == ephemeral_low - 1
    assert low <= free_port() <= high


@pytest.mark.parametrize("value", ["x", "30000", "30000-", "2000-1000", "80-90", "60000-70000", "1-2-3"])
def test_a_malformed_range_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(PORTS_ENV, value)
    with pytest.raises(ConfigError, match=f"{PORTS_ENV}=.*LOW-HIGH") as err:
        free_port()
    assert "\n" not in str(err.value)
