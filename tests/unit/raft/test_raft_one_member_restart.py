"""A one-member group restarted leads at once, but is the master to its server only once its loop says so.

Its core leads from `start` (no election to wait for), before its loop has
written its new term down and told the server (`on_leader`): a helper's probe
of a restarted single metadata server saw WATCH served 1.6 s before "is now the
master" (with a slow first fsync), so clients were served before the server's
grace periods began (an unlink of a file a mount held open, before the mount
could say so, would free it) and without the hold of a new master's changes.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from chunkfs.raft.driver import RaftLog, StateMachine

pytestmark = pytest.mark.timeout(30)


class Store:
    """A state machine that keeps each applied entry by index; `upto` stands for what a crash left of them."""

    def __init__(self, upto: dict[int, bytes] | None = None) -> None:
        self.data: dict[int, bytes] = dict(upto or {})

    def apply(self, index: int, term: int, data: bytes) -> bytes:
        self.data[index] = data
        return data

    def applied_index(self) -> int:
        return max(self.data, default=0)

    def changes(self) -> list[bytes]:
        return [d for _, d in sorted(self.data.items()) if d.startswith(b"change")]

    def machine(self) -> StateMachine:
        def nothing() -> None:
            return None

        return StateMachine(apply=self.apply, applied_index=self.applied_index, snapshot_to=lambda p: 0,
                            restore=lambda p, i: None, batch=contextlib.nullcontext, hold=nothing, release=nothing)


def member(tmp_path: Path, leaders: list[str]) -> RaftLog:
    return RaftLog(tmp_path, 1, {1: "127.0.0.1:1"}, None, bootstrap_voters=(1,),  # type: ignore[arg-type]
                   on_leader=lambda: leaders.append("told"))


def test_a_restarted_one_member_group_reads_only_once_everything_it_committed_is_applied(tmp_path: Path) -> None:
    async def main() -> None:
        first = Store()
        leaders: list[str] = []
        raft = member(tmp_path, leaders)
        await raft.start(first.machine())
        for _ in range(50):
            if raft.is_leader():
                break
            await asyncio.sleep(0.02)
        for i in range(6):
            await raft.propose(b"change %d" % i)
        await raft.stop()
        assert raft.storage is not None
        raft.storage.close()
        made = first.changes()
        assert len(made) == 6

        # The store lost its last changes (its transaction was not committed when the process died).
        behind = Store({i: d for i, d in first.data.items() if d not in made[2:]})
        leaders = []
        again = member(tmp_path, leaders)
        await again.start(behind.machine())
        assert not again.is_leader() and leaders == []  # its loop has not learnt it leads, nor told the server
        await again.read_barrier()
        assert behind.changes() == made
        assert again.is_leader() and leaders == ["told"]
        await again.stop()

    asyncio.run(main())
