"""Directory positions (d_off) the mount hands out, without a kernel.

Each position stands for a name and stays valid while the directory is open, also after a rewind and a
re-read; a handle kept open on a directory whose names keep changing, and listed again and again from
the start, keeps the positions of the names gone from it only up to a bound.
"""

from __future__ import annotations

import errno
from types import SimpleNamespace
from typing import Any

import pyfuse3
import pytest

from chunkfs.client import fuse_ops
from chunkfs.client.fuse_ops import ChunkFSOperations, MountOptions


class Directory:
    """A master's READDIR over one directory whose names the test changes."""

    def __init__(self, names: set[bytes]) -> None:
        self.names = names

    async def readdir_page(self, ino: int, after: bytes, limit: int) -> dict[str, Any]:
        page = sorted(n for n in self.names if n > after)
        return {"entries": [[n, 100, "f", {}] for n in page[:limit]], "more": len(page) > limit, "parent": 1}


class Token:
    """A kernel buffer for `room` entries: what readdir_reply put in it, (name, position)."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.got: list[tuple[bytes, int]] = []


def reply(token: Token, name: bytes, attr: Any, next_id: int) -> bool:
    if len(token.got) >= token.room:
        return False
    token.got.append((name, next_id))
    return True


@pytest.fixture
def ops(monkeypatch: pytest.MonkeyPatch) -> ChunkFSOperations:
    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    client: Any = SimpleNamespace(creds=SimpleNamespace(node="test"), on_dir_attrs=None)
    ops = ChunkFSOperations(client, MountOptions())
    ops._named = lambda attr, parent, name, since, listed=False: pyfuse3.EntryAttributes()  # type: ignore[method-assign]
    return ops


async def read(ops: ChunkFSOperations, fh: int, at: int, room: int = 1000) -> list[tuple[bytes, int]]:
    token = Token(room)
    await ops.readdir(fh, at, token)  # type: ignore[arg-type]
    return token.got


async def read_all(ops: ChunkFSOperations, fh: int, at: int = 0, room: int = 7) -> list[tuple[bytes, int]]:
    """From position `at` to the end, a few entries per call, as the kernel reads."""
    out: list[tuple[bytes, int]] = []
    for _ in range(10_000):
        got = await read(ops, fh, at, room)
        if not got:
            return out
        out += got
        at = got[-1][1]
    raise AssertionError("no end of the listing")


async def test_positions_stay_valid_after_a_rewind_and_name_the_place_they_named(ops) -> None:
    ops.client.readdir_page = Directory({b"a%03d" % i for i in range(100)}).readdir_page
    fh = await ops.opendir(9, None)  # type: ignore[arg-type]
    first = await read_all(ops, fh)
    assert [n for n, _ in first] == [b".", b".."] + sorted(b"a%03d" % i for i in range(100))
    assert len({at for _, at in first}) == len(first)
    at = dict(first)
    assert (await read(ops, fh, 0, room=3)) == first[:3]  # a rewind, read a little: the same positions
    assert (await read(ops, fh, at[b"a090"], room=1)) == [(b"a091", at[b"a091"])]
    assert (await read(ops, fh, at[b"."], room=1)) == [(b"..", at[b".."])]
    assert (await read(ops, fh, at[b".."], room=1)) == [(b"a000", at[b"a000"])]
    with pytest.raises(pyfuse3.FUSEError) as exc:
        await read(ops, fh, max(at.values()) + 1)
    assert exc.value.errno == errno.EINVAL


async def test_a_handle_listed_again_and_again_forgets_only_gone_names_past_a_bound(ops, monkeypatch) -> None:
    monkeypatch.setattr(fuse_ops, "DIR_GONE_KEPT", 10)
    directory = Directory({b"keep%02d" % i for i in range(20)})
    ops.client.readdir_page = directory.readdir_page
    fh = await ops.opendir(9, None)  # type: ignore[arg-type]
    kept = dict(await read_all(ops, fh))
    d = ops.dirs[fh]
    sizes = []
    for round_ in range(30):  # each round: 15 names replaced by new ones, then a listing from the start
        directory.names = {n for n in directory.names if n.startswith(b"keep")}
        directory.names |= {b"new%02d-%02d" % (round_, i) for i in range(15)}
        await read_all(ops, fh)
        sizes.append(len(d.position))
        assert len(d.position) == len(d.named)
    # 37 entries now ("." and ".." too): at most 2 * 37 + 10 positions after a listing.
    assert max(sizes) <= 2 * 37 + 10, sizes
    for name in (b".", b"..", b"keep00", b"keep10"):  # still there: their positions never forgotten
        assert d.position[name] == kept[name]
    assert (await read(ops, fh, kept[b"keep10"], room=1)) == [(b"keep11", kept[b"keep11"])]


async def test_a_first_read_at_a_position_never_handed_out_is_refused(ops) -> None:
    ops.client.readdir_page = Directory({b"a"}).readdir_page
    fh = await ops.opendir(9, None)  # type: ignore[arg-type]
    for at in (-1, 1, 5):
        with pytest.raises(pyfuse3.FUSEError) as exc:
            await read(ops, fh, at)
        assert exc.value.errno == errno.EINVAL
    assert [n for n, _ in await read_all(ops, fh)] == [b".", b"..", b"a"]
