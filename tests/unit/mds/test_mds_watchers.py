"""Who the master tells of changes (watchers.py): every watcher but the changer, and never silently nobody."""

from __future__ import annotations

from typing import Any

from chunkfs.common.errors import Unavailable
from chunkfs.mds.watchers import Watchers
from chunkfs.protocol.messages import Msg, validate_notice


class Conn:
    def __init__(self, name: str, accepts: bool = True, gone: bool = False) -> None:
        self.peer_name = name
        self.accepts = accepts
        self.gone = gone
        self.closed = False
        self.sent: list[tuple[Msg, dict[str, Any]]] = []

    def notify(self, msg: Msg, header: dict[str, Any]) -> bool:
        if self.gone:
            raise Unavailable("closed")
        if self.accepts:
            validate_notice(msg, header, 0)  # what goes out is what a mount accepts
            self.sent.append((msg, header))
        return self.accepts

    def close(self) -> None:
        self.closed = True


def test_every_watcher_but_the_changer_is_told_what_changed_once() -> None:
    w = Watchers()
    me, other = Conn("me"), Conn("other")
    w.add(me)  # type: ignore[arg-type]
    w.add(other)  # type: ignore[arg-type]
    w.changed(me, [(1, "a"), (1, b"a"), (2, b"b")], [1, 2, 1])  # type: ignore[arg-type]
    assert me.sent == []
    assert other.sent == [(Msg.INVALIDATE, {"entries": [[1, b"a"], [2, b"b"]], "inodes": [1, 2]})]
    w.changed(None, inodes=[5])
    assert len(me.sent) == 1 and len(other.sent) == 2


def test_a_watcher_that_cannot_take_a_notice_is_closed_not_skipped() -> None:
    w = Watchers()
    slow, gone, fine = Conn("slow", accepts=False), Conn("gone", gone=True), Conn("fine")
    for conn in (slow, gone, fine):
        w.add(conn)  # type: ignore[arg-type]
    w.changed(None, inodes=[1])
    assert slow.closed and gone.closed and not fine.closed
    assert len(w) == 1
    w.changed(None, inodes=[2])
    assert len(fine.sent) == 2


def test_losing_the_mastership_closes_every_watch() -> None:
    w = Watchers()
    conns = [Conn(str(i)) for i in range(3)]
    for conn in conns:
        w.add(conn)  # type: ignore[arg-type]
    w.discard(conns[0])  # type: ignore[arg-type]
    w.drop_all()
    assert [c.closed for c in conns] == [False, True, True]
    assert len(w) == 0


def test_a_cut_is_told_only_to_the_watchers_that_take_it() -> None:
    """A mount of an earlier version refuses a notice's `cuts` (an unknown field): it is sent without."""
    w = Watchers()
    new, old = Conn("new"), Conn("old")
    w.add(new, ["cuts"])  # type: ignore[arg-type]
    w.add(old)  # type: ignore[arg-type]
    w.changed(None, inodes=[7], cut={"ino": 7, "cut": 42, "size": 10, "type": "f"})
    assert new.sent == [(Msg.INVALIDATE, {"entries": [], "inodes": [7], "cuts": [[7, 42, 10]]})]
    assert old.sent == [(Msg.INVALIDATE, {"entries": [], "inodes": [7]})]
    w.changed(None, inodes=[7])  # not a cut
    assert "cuts" not in new.sent[-1][1]
