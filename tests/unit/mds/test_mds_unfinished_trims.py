"""A new master takes up the trims an earlier one left unfinished, and leaves no note behind."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from chunkfs.mds.open_files import OpenFileTable, OrphanReaper
from chunkfs.mds.store import MetadataStore, encode_command
from chunkfs.protocol.messages import ROOT_INO

CS = 1 << 20


class FakeMaster:
    """What OrphanReaper asks of its metadata server: the store, proposals applied at once, the zeroing."""

    def __init__(self, store: MetadataStore) -> None:
        self.store = store
        self.open_files = OpenFileTable()
        self.zeroed: list[int] = []
        self.raft = self

    def is_leader(self) -> bool:
        return True

    async def propose(self, op: str, **args: Any) -> Any:
        return self.store.apply(self.store.applied_index + 1, 1, encode_command(op, **args))

    async def zero_trimmed(self, ino: int) -> None:
        self.zeroed.append(ino)
        await self.propose("trim_zeroed", ino=ino)


def test_a_trim_an_earlier_master_left_unzeroed_is_zeroed_and_not_noted_for_another_trim(tmp_path: Path) -> None:
    store = MetadataStore(tmp_path / "meta.db", CS)
    try:
        master = FakeMaster(store)

        async def main() -> None:
            ino = (await master.propose("create", parent=ROOT_INO, name="f", mode=0o644, time=1.0,
                                        exclusive=True))["attr"]["ino"]
            await master.propose("extend", ino=ino, size=100, mtime=2)
            await master.propose("note_trims", inos=[ino])
            await master.propose("trim", ino=ino, size=100)  # committed; that master died before zeroing
            assert store.unzeroed() == [ino] and store.to_trim() == []
            reaper = OrphanReaper(master)  # type: ignore[arg-type]
            await reaper._trim_left()
            assert master.zeroed == [ino]
            assert store.unzeroed() == []
            # Nothing left for the next master that gives a session up: it would trim the file again,
            # at whatever size live mounts have grown it to since.
            assert store.to_trim() == []

        asyncio.run(main())
    finally:
        store.close()
