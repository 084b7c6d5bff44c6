"""The order in which a client's link to the master tries the metadata servers after a failure.

Every request waiting on a connection that failed reports the failure; the failed server must go
last once, not once per report: rotating the list once per report (four requests on a frozen
master's connection) brought the frozen master back to the front, and the next attempt spent a
whole handshake timeout on it (a probe's create waited 14 s, 5 of them there).
"""

from __future__ import annotations

from chunkfs.protocol.mds_link import MdsLink
from chunkfs.protocol.rpc import Credentials


def link(*addrs: str) -> MdsLink:
    return MdsLink(addrs, Credentials("c", bytes(32), "client", "t"))


def test_a_failed_server_goes_last_once_however_many_requests_report_it() -> None:
    mds = link("a:1", "b:1", "c:1")
    for _ in range(4):
        mds._demote("a:1")
    assert mds.addrs == ["b:1", "c:1", "a:1"]


def test_a_late_report_of_an_older_failure_keeps_the_server_last() -> None:
    mds = link("a:1", "b:1", "c:1")
    mds._demote("a:1")
    mds._demote("b:1")
    mds._demote("a:1")
    assert mds.addrs == ["c:1", "b:1", "a:1"]


def test_an_unknown_or_only_server_changes_nothing() -> None:
    mds = link("a:1")
    mds._demote("a:1")
    mds._demote("z:9")
    assert mds.addrs == ["a:1"]
