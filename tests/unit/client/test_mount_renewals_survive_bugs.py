"""The mount's background renewals outlive an unexpected error.

If the loop that renews a mount's session ended on a bug, the master would, a
session timeout later, free every unlinked file this mount still holds open;
if the lease renewals ended, every write to a file opened with ``-o exclusive``
would fail once its lease ran out.  Both loops log such an error and go on.
"""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

from chunkfs.client import fuse_ops
from chunkfs.client.fuse_ops import ChunkFSOperations, MountOptions, OpenFile
from chunkfs.testing.cluster import wait_for_async


class FlakyClient:
    """Answers renewals, except the first of each kind, which raises a bug-like error."""

    def __init__(self) -> None:
        self.creds = SimpleNamespace(node="mount-test")
        self.on_dir_attrs = None
        self.renewals = 0
        self.lease_renewals = 0

    async def renew_session(
        self, session: str, open_inos: list[int], complete: bool = True, oseqs: list[int] | None = None
    ) -> bool:
        self.renewals += 1
        if self.renewals == 1:
            raise KeyError("a bug")
        return True

    async def file_lease(self, ino: int, holder: str, op: str) -> float:
        self.lease_renewals += 1
        if self.lease_renewals == 1:
            raise RuntimeError("a bug")
        return 10.0

    async def release_inos(self, session: str, releases: dict[int, int]) -> None:
        raise TypeError("a bug")


def test_session_and_lease_renewals_go_on_after_an_unexpected_error(monkeypatch, caplog) -> None:
    monkeypatch.setattr(fuse_ops, "SESSION_TTL", 0.08)
    monkeypatch.setattr(fuse_ops, "LEASE_TTL", 0.08)
    caplog.set_level(logging.ERROR, logger=fuse_ops.__name__)

    async def scenario() -> tuple[int, int]:
        client = FlakyClient()
        ops = ChunkFSOperations(client, MountOptions())  # type: ignore[arg-type]
        of = OpenFile(7, 0, 0, 0)
        of.leased, of.lease_until = True, 0.0
        ops.files[7] = of
        ops._unreleased[8] = 1  # a closed file whose release fails with a bug every time
        keeper = asyncio.get_running_loop().create_task(ops._keep_session())
        renewer = asyncio.get_running_loop().create_task(ops._renew_leases())
        try:
            await wait_for_async("three session and three lease renewals",
                                 lambda: client.renewals >= 3 and client.lease_renewals >= 3)
        finally:
            keeper.cancel()
            renewer.cancel()
            await asyncio.gather(keeper, renewer, return_exceptions=True)
        return client.renewals, client.lease_renewals

    renewals, lease_renewals = asyncio.run(scenario())
    assert renewals >= 3, "the session renewals stopped after the first error"
    assert lease_renewals >= 3, "the lease renewals stopped after the first error"
    messages = [r.getMessage() for r in caplog.records]
    assert any("renewing mount session" in m for m in messages), messages
    assert any("renewing exclusive leases" in m for m in messages), messages
    assert any("releasing closed files" in m for m in messages), messages

