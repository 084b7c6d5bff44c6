"""Open files on the master: sessions, holds, expiry, the grace period of a new master, the freeing guard."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from chunkfs.common.errors import InvalidArgument, NotFound
from chunkfs.mds.open_files import OpenFileTable
from chunkfs.mds.server import MetadataServer
from chunkfs.mds.store import MetadataStore, encode_command
from chunkfs.protocol.messages import ROOT_INO, int_list


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_held_until_the_last_session_releases() -> None:
    t = OpenFileTable(ttl=10, clock=Clock())
    assert not t.held(7)
    t.open("A", 7)
    t.open("A", 7)  # a second open by one mount is one hold
    t.open("B", 7)
    assert t.held(7)
    assert t.release("A", 7) is False
    assert t.release("A", 7) is False  # twice changes nothing
    assert t.release("B", 7) is True
    assert not t.held(7)
    assert t.release("C", 8) is True  # never held


def test_expired_session_releases_what_it_held() -> None:
    clock = Clock()
    t = OpenFileTable(ttl=10, clock=clock)
    t.open("A", 1)
    t.open("A", 2)
    t.open("B", 2)
    clock.now += 6
    assert t.renew("B") is False  # opening registers no session: only SESSION does
    assert t.renew("B") is True
    clock.now += 6  # A: 12 s without renewal; B renewed 6 s ago
    assert t.expire() == [1]
    assert not t.held(1) and t.held(2)
    assert t.left_by_dead == {1}  # what A may have written past its size: trimmed
    assert t.trim_later == {2}  # ... and once B lets go of it
    assert t.renew("A") is False  # the mount learns that it must re-register its files
    assert t.ended == {"A"}  # to be closed in the store
    t.closed(["A"])
    assert not t.ended


def test_a_mount_whose_first_request_to_a_new_master_is_an_open_still_resends_the_others() -> None:
    t = OpenFileTable(ttl=10, clock=Clock())
    t.start_grace()
    t.listed(["A"])
    t.open("A", 5)  # a new file opened before the session's renewal
    assert t.renew("A", complete=True) is False  # so it re-sends 1, 2, ... (what it opened before)
    assert t.in_grace()
    t.renew("A", complete=True)
    assert not t.in_grace()


def test_grace_ends_when_every_listed_session_has_sent_its_files() -> None:
    clock = Clock()
    t = OpenFileTable(ttl=600, clock=clock)
    t.start_grace()
    assert t.in_grace()  # not listed yet: anyone may hold anything
    t.listed(["A", "B"])
    assert t.renew("A", complete=True) is False
    t.open("A", 1)
    assert t.renew("A", complete=False) is True  # a page, more to come
    assert t.awaited == {"A", "B"} and t.held(99)
    t.renew("A", complete=True)
    assert t.awaited == {"B"} and t.held(99)
    assert t.renew("B") is False
    t.renew("B", complete=True)  # B held nothing
    assert not t.in_grace() and not t.held(99) and t.held(1)
    assert clock.now < t.grace_until  # long before the timeout
    t.stored.add("C")  # a mount that starts under this master sends it everything from the start:
    t.open("C", 5)  # its first request an open, before its first renewal
    assert not t.in_grace() and not t.held(99)  # the grace period, once over, stays over


def test_a_listed_session_that_never_comes_back_is_waited_for_up_to_the_timeout() -> None:
    clock = Clock()
    t = OpenFileTable(ttl=600, clock=clock)
    t.start_grace()
    t.listed(["gone"])
    clock.now += 599
    assert t.held(99)
    clock.now += 1
    assert not t.held(99)
    assert t.ended == {"gone"}


def test_a_silent_session_lasts_the_timeout_and_an_ended_one_goes_at_once() -> None:
    clock = Clock()
    t = OpenFileTable(ttl=600, clock=clock)
    t.renew("A")
    t.open("A", 1)
    t.renew("B")
    t.open("B", 2)
    clock.now += 599  # stopped or cut off for almost ten minutes
    assert t.expire() == [] and t.held(1)
    assert t.end("B") == [2] and not t.held(2) and t.ended == {"B"}
    assert not t.left_by_dead  # an unmount: every size was reported
    clock.now += 1
    assert t.expire() == [1]


def test_new_master_counts_everything_held_during_grace() -> None:
    clock = Clock()
    t = OpenFileTable(ttl=10, clock=clock)
    t.renew("A")
    t.open("A", 1)
    t.start_grace()
    assert t.held(99) and t.in_grace()
    assert t.renew("A") is False  # forgotten: the mount re-sends its opens
    t.open("A", 1)
    clock.now += 10  # never listed (no read barrier): the grace lasts the whole timeout
    assert not t.in_grace()
    assert t.held(1) and not t.held(99)


def test_an_inode_being_freed_cannot_be_opened() -> None:
    t = OpenFileTable(ttl=10, clock=Clock())
    t.freeing.add(5)
    with pytest.raises(NotFound):
        t.open("A", 5)
    assert not t.held(5)


@pytest.mark.parametrize("session", ["", "x" * 257])
def test_bad_session_names(session: str) -> None:
    with pytest.raises(InvalidArgument):
        OpenFileTable().renew(session)


@pytest.mark.parametrize("value", [None, "1", [1, "2"], [True], list(range(1001))])
def test_inode_lists_from_the_wire_are_checked(value: object) -> None:
    with pytest.raises(InvalidArgument):
        int_list(value, "open")
    assert int_list([1, 2], "open") == [1, 2]


def test_silent_sessions_are_those_not_heard_from_lately() -> None:
    clock = Clock()
    t = OpenFileTable(ttl=600, clock=clock)
    t.renew("A")
    t.renew("B")
    clock.now += 8
    t.renew("B")
    assert t.silent(["A", "B", "C"], after=5) == ["A", "C"]  # C: listed, never heard by this master


def test_the_last_release_wakes_the_reaper_only_for_an_orphan(tmp_path: Path) -> None:
    """A close of a file that still has a name is not the reaper's business (a pass of its loop per file)."""
    store = MetadataStore(tmp_path / "meta.db", 1 << 20)
    try:
        def apply(index: int, op: str, **args: Any) -> Any:
            return store.apply(index, 1, encode_command(op, time=1000.0 + index, **args))

        named = apply(1, "create", parent=ROOT_INO, name="named", mode=0o644, exclusive=True)["attr"]["ino"]
        gone = apply(2, "create", parent=ROOT_INO, name="gone", mode=0o644, exclusive=True)["attr"]["ino"]
        assert apply(3, "unlink", parent=ROOT_INO, name="gone", free_ino=0)["orphan"] == gone
        considered: list[int] = []
        mds = SimpleNamespace(open_files=OpenFileTable(ttl=10, clock=Clock()), store=store,
                              reaper=SimpleNamespace(consider=considered.append))
        mds.open_files.listed([])  # not a new master's grace period
        for ino in (named, gone):
            mds.open_files.open("A", ino)
            mds.open_files.open("B", ino)
            for session in ("A", "B"):
                asyncio.run(MetadataServer._on_release(mds, None, {"session": session, "ino": ino}))
        assert considered == [gone]
    finally:
        store.close()


def test_a_release_of_several_files_keeps_those_registered_again_since(tmp_path: Path) -> None:
    """RELEASE names files with the mount's number of the last registration each close counted."""
    store = MetadataStore(tmp_path / "meta.db", 1 << 20)
    try:
        inos = [store.apply(i, 1, encode_command("create", parent=ROOT_INO, name=f"f{i}", mode=0o644, exclusive=True,
                                                 time=1000.0 + i))["attr"]["ino"] for i in (1, 2, 3)]
        mds = SimpleNamespace(open_files=OpenFileTable(ttl=10, clock=Clock()), store=store,
                              reaper=SimpleNamespace(consider=lambda ino: None))
        mds.open_files.listed([])
        for seq, ino in enumerate(inos, 1):
            mds.open_files.open("A", ino, seq)
        mds.open_files.open("A", inos[2], 9)  # opened again after the close the release counts

        def release(h: dict[str, Any]) -> Any:
            return asyncio.run(MetadataServer._on_release(mds, None, {"session": "A", **h}))

        release({"inos": inos, "uptos": [1, 2, 3]})
        assert [mds.open_files.held(ino) for ino in inos] == [False, False, True]
        for bad in ({"inos": inos, "uptos": [1]}, {"inos": inos}, {}, {"inos": ["x"], "uptos": [1]}):
            with pytest.raises(InvalidArgument):
                release(bad)
        release({"ino": inos[2]})  # an older mount's release: all of it
        assert not mds.open_files.held(inos[2])
    finally:
        store.close()


def test_a_file_to_trim_while_held_is_trimmed_once_its_last_holder_lets_go() -> None:
    """A dead writer's file another mount held when the session expired (a fault probe: read every 0.4 s,
    the trim was dropped for good and the dead writer's bytes showed after a truncate that grew the file)."""
    t = OpenFileTable(ttl=10, clock=Clock())
    t.open("A", 1)
    t.open("B", 1)
    t.open("B", 2)
    t.trim_later |= {1, 2}  # (what the reaper does with a held file, or a writer told its writes were cut)
    assert t.release("A", 1) is False and t.trim_later == {1, 2} and not t.left_by_dead  # B still holds it
    assert t.end("B") == [1, 2]
    assert t.left_by_dead == {1, 2} and not t.trim_later


def test_a_hold_to_read_does_not_wait_for_a_dead_writers_trim_and_one_to_write_does() -> None:
    """A mount holding a dead writer's file only to read cannot have written past its size: the file is
    trimmed at the writer's expiry, not at that mount's close (a fault probe: a reader holding it across
    the expiry, while another mount grew it, let the dead writer's bytes show).  A hold that may write
    waits, and stays a writer's until it ends; an open that does not say (an older mount, a session's
    files re-sent to a new master) may write."""
    clock = Clock()
    t = OpenFileTable(ttl=10, clock=clock)
    for ino in (1, 2, 3):
        t.open("dead", ino)
    t.open("reader", 1, read_only=True)
    t.open("writer", 2)
    t.open("unsaid", 3)
    assert t.held(1) and not t.may_be_written(4)
    t.renew("reader"), t.renew("writer"), t.renew("unsaid")
    clock.now += 11
    t.renew("reader"), t.renew("writer"), t.renew("unsaid")
    assert t.expire() == []
    assert t.left_by_dead == {1} and t.trim_later == {2, 3}
    assert t.held(1) and not t.may_be_written(1)
    t.open("writer", 2, seq=5, read_only=True)  # a second open to read: the hold still may write
    assert t.release("writer", 2, upto=4) is False and t.trim_later == {2, 3}  # (registered again since)
    t.open("reader", 3, read_only=True)
    assert t.release("unsaid", 3) is False  # the reader still holds it, but nobody may write it: trimmed now
    assert t.trim_later == {2} and t.left_by_dead == {1, 3}
    assert t.release("writer", 2) is True and t.left_by_dead == {1, 2, 3} and not t.trim_later


def test_a_hold_said_to_be_only_to_read_since_no_longer_waits_for_a_dead_writers_trim() -> None:
    """A mount whose last handle that could write a file was closed, with everything committed, says it
    holds the file only to read (RELEASE's `read_only`): a trim waiting for that hold goes ahead (a fault
    probe: a reader that had once opened the file to write, even before the writer died, kept the trim
    off until its last close, at a size another mount had grown the file to meanwhile: 16 of 16).  Not if
    the mount registered the file again since: that open may write."""
    clock = Clock()
    t = OpenFileTable(ttl=10, clock=clock)
    for ino in (1, 2):
        t.open("dead", ino)
        t.open("holder", ino, seq=ino)
    t.renew("holder")
    clock.now += 11
    t.renew("holder")
    assert t.expire() == [] and t.trim_later == {1, 2}
    t.to_read("holder", 1, upto=1)
    assert t.held(1) and not t.may_be_written(1) and t.trim_later == {2} and t.left_by_dead == {1}
    t.open("holder", 2, seq=7)  # registered again before its downgrade arrived
    t.to_read("holder", 2, upto=2)
    assert t.may_be_written(2) and t.trim_later == {2}
    t.to_read("holder", 2, upto=7)
    assert not t.may_be_written(2) and t.left_by_dead == {1, 2} and not t.trim_later
    t.to_read("stranger", 3, upto=9)  # holds nothing: nothing changes
    assert not t.held(3)
    t.open("holder", 1, seq=8)  # may write again
    assert t.may_be_written(1)
