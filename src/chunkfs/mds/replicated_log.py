"""The narrow seam between the metadata server and consensus.

The MDS turns every change into a command, proposes it, and gets back the
result of applying it — on every member, in the same order.  It does not know
whether the log behind this interface is a single local journal
(`LocalLog`, a one-member group) or a Raft group: the Raft issue replaces the
implementation, not the MDS.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

#: Applies one committed entry: (index, term, command bytes) -> result.
ApplyFn = Callable[[int, int, bytes], Any]


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

    async def start(self, apply: ApplyFn, applied_index: int) -> None:
        """Recover, re-apply committed entries past `applied_index`, start serving."""
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
