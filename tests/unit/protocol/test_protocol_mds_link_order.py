"""The order in which a client's link to the master tries the metadata servers after a failure.

Every request waiting on a connection that failed reports the failure; the failed server must go
last once, not once per report: rotating the list once per report (four requests on a frozen
master's connection) brought the frozen master back to the front, and the next attempt spent a
whole handshake timeout on it (a probe's create waited 14 s, 5 of them there).
"""

from __future__ import annotations

from typing import Any

import pytest

from chunkfs.common.errors import NotMaster, Timeout, Unavailable
from chunkfs.protocol.mds_link import MdsLink
from chunkfs.protocol.messages import Msg
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


#: A scripted answer: the connection is lost (closed, and the request fails with Unavailable).
LOST = object()


class FakeConn:
    """A connection to one MDS whose answers are scripted: a reply, an error it raises, or LOST."""

    def __init__(self, peer: str, answers: list[Any]) -> None:
        self.peer_name, self.answers, self.closed = peer, answers, False

    async def call(self, msg: Msg, header: dict[str, Any], payload: bytes = b"", timeout: float = 0) -> Any:
        answer = self.answers.pop(0)
        if answer is LOST:
            self.closed = True
            raise Unavailable(f"connection to {self.peer_name} lost")
        if isinstance(answer, BaseException):
            raise answer
        return answer, b""

    def close(self, why: str = "") -> None:
        self.closed = True


def scripted(mds: MdsLink, first: list[Any], later: list[Any]) -> list[FakeConn]:
    """Connections made by `mds` from now on: the first answers `first`, each later one `later`."""
    made: list[FakeConn] = []

    async def connection() -> FakeConn:
        if mds._conn is None or mds._conn.closed:
            made.append(FakeConn(mds.addrs[0], list(first if not made else later)))
            mds._conn = made[-1]  # type: ignore[assignment]
        return mds._conn  # type: ignore[return-value]

    mds._connection = connection  # type: ignore[method-assign]
    return made


async def test_the_masters_own_unavailable_answer_is_asked_again_on_the_same_connection() -> None:
    """A new master answers "unavailable, retry shortly" while its chunk servers register: that is no
    lost connection.  Taken for one, the link closed it, sent the retry to a follower first (which named
    the master back) and paused longer each time: a probe's write waited 1-2 s past the servers' return."""
    mds = link("a:1", "b:1", "c:1")
    new_master = Unavailable("this master is new; waiting for chunk servers [2] to reconnect: retry shortly")
    made = scripted(mds, [new_master, new_master, {"attr": "x"}], [{"attr": "elsewhere"}])
    assert await mds.call(Msg.GETATTR, {"ino": 1}) == {"attr": "x"}
    assert len(made) == 1 and not made[0].closed
    assert mds.addrs == ["a:1", "b:1", "c:1"]


async def test_a_lost_connection_is_still_left_for_the_next_server() -> None:
    mds = link("a:1", "b:1", "c:1")
    made = scripted(mds, [LOST], [{"attr": "b"}])
    assert await mds.call(Msg.GETATTR, {"ino": 1}) == {"attr": "b"}
    assert [c.peer_name for c in made] == ["a:1", "b:1"]
    assert mds.addrs == ["b:1", "c:1", "a:1"]


def test_a_late_failure_on_an_older_connection_leaves_the_new_one_open() -> None:
    mds = link("a:1", "b:1")
    old, new = FakeConn("a:1", []), FakeConn("b:1", [])
    mds._conn = new  # type: ignore[assignment]
    mds._drop(old)  # type: ignore[arg-type]
    assert old.closed and not new.closed and mds._conn is new


def sequence(mds: MdsLink, answers: list[Any]) -> None:
    """Every connection `mds` makes answers from one shared script, in order (a new one after each drop)."""
    async def connection() -> FakeConn:
        if mds._conn is None or mds._conn.closed:
            mds._conn = FakeConn(mds.addrs[0], answers)  # type: ignore[assignment]
        return mds._conn  # type: ignore[return-value]

    mds._connection = connection  # type: ignore[method-assign]


NOT_COMMITTED = Timeout("metadata change not committed within 15s (is a quorum of metadata servers up?); "
                        "it may still take effect")
NO_MASTER = NotMaster("MDS#1 is not the master: no master is elected right now", leader="")


@pytest.mark.parametrize("wait_out", [True, False])
async def test_a_change_that_timed_out_in_a_masters_log_waits_for_an_answer_past_retry_for(wait_out: bool) -> None:
    """A fault probe: a rename the mount failed with EIO (no master for longer than `master_wait`) was
    committed 10 s later by a master that held it, and the program's retry got ENOENT.  A mount now asks
    again until a master answers (with what was done, exactly once); other clients fail as before."""
    mds = link("a:1")
    mds.retry_for = 0.3
    mds.wait_out_unknown = wait_out
    sequence(mds, [NOT_COMMITTED, *[NO_MASTER] * 4, {"attr": "renamed"}])
    if wait_out:
        assert await mds.call(Msg.RENAME, {"parent": 1, "name": b"a", "new_parent": 1, "new_name": b"b"}) == \
            {"attr": "renamed"}
    else:
        with pytest.raises(NotMaster):
            await mds.call(Msg.RENAME, {"parent": 1, "name": b"a", "new_parent": 1, "new_name": b"b"})


async def test_a_change_only_refused_or_never_sent_still_fails_at_retry_for() -> None:
    mds = link("a:1")
    mds.retry_for = 0.3
    mds.wait_out_unknown = True
    sequence(mds, [NO_MASTER] * 20 + [{"attr": "late"}])
    with pytest.raises(NotMaster):
        await mds.call(Msg.RENAME, {"parent": 1, "name": b"a", "new_parent": 1, "new_name": b"b"})

    async def connect_times_out() -> FakeConn:
        raise Timeout("connecting to a:1 timed out after 1s")

    mds._connection = connect_times_out  # type: ignore[method-assign]
    with pytest.raises(Timeout):
        await mds.call(Msg.RENAME, {"parent": 1, "name": b"a", "new_parent": 1, "new_name": b"b"})
