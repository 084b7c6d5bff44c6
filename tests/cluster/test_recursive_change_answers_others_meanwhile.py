"""A recursive set-replicas goes in pages: other requests are answered while it runs, and the answer is right.

Before, the whole subtree changed inside one apply on the master's event loop (over 10^6 files,
a frozen master).  Now the master proposes one command per page of inodes (subtree.py); here
CHUNKFS_WALK_PAGE=2 makes a 60-file directory take 30 pages.  While the change runs, a second
client lists the directory (one READDIR with every entry's attributes, answered at one point in
the master's state): some of those answers must come back with the change half done — a request
served between two pages.  With a single apply, every answer shows all or none of it changed.
"""

from __future__ import annotations

import asyncio

from chunkfs.client.client import Client
from chunkfs.common.config import load_client_config

FILES = 60
#: Rounds tried (alternating values) until a listing lands between two pages; one almost always does.
ROUNDS = 5
#: Listings at most per round (the change ends long before).
MAX_LISTINGS = 5000


def test_other_requests_are_answered_between_pages_of_a_recursive_change(make_cluster, monkeypatch) -> None:
    monkeypatch.setenv("CHUNKFS_WALK_PAGE", "2")
    cluster = make_cluster(n_cs=1, n_mds=1)

    async def run() -> tuple[list[int], set[tuple[int, ...]], list[int]]:
        writer, reader = Client(load_client_config(cluster.name)), Client(load_client_config(cluster.name))
        try:
            top = (await writer.mkdir("/tree"))["ino"]
            limit = asyncio.Semaphore(16)

            async def make(i: int) -> None:
                async with limit:
                    await writer.create(f"/tree/f{i:03d}")

            await asyncio.gather(*(make(i) for i in range(FILES)))
            answers: list[int] = []
            views: set[tuple[int, ...]] = set()
            final: list[int] = []
            for round_ in range(ROUNDS):
                value = 1 + round_ % 2
                change = asyncio.ensure_future(writer.set_replicas("/tree", value, 1, recursive=True))
                mixed = False
                for _ in range(MAX_LISTINGS):
                    if change.done():
                        break
                    reply = await reader.readdir_page(top, b"", 1000)
                    view = tuple(sorted({e[3]["replicas"] for e in reply["entries"]}))
                    views.add(view)
                    mixed = mixed or len(view) > 1
                answers.append(await change)
                final = sorted({e[3]["replicas"] for e in (await reader.readdir_page(top, b"", 1000))["entries"]})
                assert final == [value]
                if mixed:
                    break
            return answers, views, final
        finally:
            await writer.close()
            await reader.close()

    answers, views, final = asyncio.run(run())
    assert all(a == FILES + 1 for a in answers), answers  # the directory and every file, each counted once
    assert any(len(v) > 1 for v in views), f"no listing was answered while the change was half done: {views}"
