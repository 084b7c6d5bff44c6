"""A server notices its folder gone (common/folder_watch.py)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from chunkfs.common.folder_watch import changed, identity, watch


def test_the_same_folder_is_unchanged_and_a_removed_or_remade_one_is_not(tmp_path: Path) -> None:
    folder = tmp_path / "chunks"
    folder.mkdir()
    known = identity(folder)
    assert changed(folder, known) is None
    (folder / "a").write_bytes(b"x")  # what is inside may change
    assert changed(folder, known) is None
    folder.rename(tmp_path / "away")  # still there, so the new folder cannot get its inode number
    assert changed(folder, known) == "was removed"
    folder.mkdir()
    assert "replaced" in str(changed(folder, known))


def test_watch_returns_the_reason_once_the_folder_is_gone(tmp_path: Path) -> None:
    folder = tmp_path / "chunks"
    folder.mkdir()

    async def run() -> str:
        watcher = asyncio.create_task(watch(folder, interval=0.01))
        await asyncio.sleep(0.05)
        assert not watcher.done()
        shutil.rmtree(folder)
        return await asyncio.wait_for(watcher, timeout=5)

    assert asyncio.run(run()) == "was removed"
