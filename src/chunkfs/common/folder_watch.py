"""Whether the folder a server started on is still there.

A directory removed (`rm -rf`) or a disk unmounted from under a running
server leaves it working on files that are gone.  A chunk server then
serves nothing: every replica it lists is gone, yet it heartbeats, counts
as active, and the master goes on listing it as a holder of every chunk it
had (a fault probe found reads failing and chunks shown healthy for as long
as that lasted, until the weekly scrub).  A metadata server goes on voting
and acknowledging with a Raft log and a store no start can find again.

So each server looks every `CHECK_INTERVAL` seconds: its folder must be the
same one (device and inode) it opened at start.  If not, it stops with a
clear reason (`failed`, exit status 3): the others see it gone and act as
for any dead server.  It does not make a new folder there by itself: on an
unmounted disk that would fill the system disk below it.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

#: Seconds between two looks at the data directory.
CHECK_INTERVAL = 2.0


def identity(path: Path) -> tuple[int, int]:
    """(device, inode) of a folder: another folder made at the same path has another inode."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


def changed(path: Path, known: tuple[int, int]) -> str | None:
    """Why `path` is no longer the folder known as `known`, or None if it still is."""
    try:
        now = identity(path)
    except FileNotFoundError:
        return "was removed"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if now != known:
        return "was replaced by another folder (removed and made again, or its disk unmounted)"
    return None


async def watch(path: Path, interval: float = CHECK_INTERVAL) -> str:
    """Return, with why ("was removed", ...), once `path` is no longer the folder it is now."""
    known = await asyncio.to_thread(identity, path)
    while True:
        await asyncio.sleep(interval)
        why = await asyncio.to_thread(changed, path, known)
        if why is not None:  # said by whoever stops on it (common/daemon.py logs it)
            return why
