"""The narrow seam between the metadata server and consensus.

The MDS turns every change into a command, proposes it, and gets back the
result of applying it — on every member, in the same order.  The one
implementation is `chunkfs.raft.driver.RaftLog`; a single-MDS cluster is a
one-member Raft group, the same code.  Tests may put a fake behind this seam.
"""

from __future__ import annotations

from typing import Any, Protocol

from chunkfs.raft.driver import StateMachine


class ReplicatedLog(Protocol):
    """What the MDS needs from its log."""

    @property
    def term(self) -> int:
        """The current term; chunk versions carry it so a deposed master's maps are refused."""
        ...

    def is_leader(self) -> bool:
        """Whether this member may answer metadata requests now."""
        ...

    def leader_hint(self) -> str | None:
        """The address of the master as far as this member knows, for redirects."""
        ...

    async def start(self, sm: StateMachine) -> None:
        """Recover, re-apply committed entries past the store's applied index, start serving."""
        ...

    async def propose(self, command: bytes) -> Any:
        """Append a command; return the result of applying it once it is committed."""
        ...

    async def read_barrier(self) -> None:
        """Return once local state reflects every write committed before the call."""
        ...

    def members(self) -> list[dict[str, Any]]:
        """The members with their role and indexes, for `chunkfs stat`."""
        ...

    async def stop(self) -> None: ...
