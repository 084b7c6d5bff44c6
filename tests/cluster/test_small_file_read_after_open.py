"""Reading a small file after its open takes no map request: the OPEN answer carries chunk 0's map.

A file of one chunk: OPEN, then the read goes straight to a replica (`tar -d`, a compiler reading
headers, a web server).  A longer file: its chunks' maps are asked for as before.
"""

from __future__ import annotations

import os
from typing import Any

from chunkfs.protocol.messages import Msg


def _counting(client: Any) -> list[Msg]:
    sent: list[Msg] = []
    real = client.client.mds.call

    async def call(msg: Msg, *args: Any, **kwargs: Any) -> Any:
        sent.append(msg)
        return await real(msg, *args, **kwargs)

    client.client.mds.call = call
    return sent


def test_a_one_chunk_file_is_read_with_the_map_its_open_brought(make_cluster) -> None:
    cluster = make_cluster(n_cs=3)
    small, big = os.urandom(6000), None
    with cluster.client() as w:
        big = os.urandom(w.client.chunk_size + 5000)
        for path, data in (("/small", small), ("/big", big)):
            f = w.open(path, create=True)
            w.run(f.write(0, data))
            w.run(f.fsync())
            w.run(f.close())
    with cluster.client() as r:  # another mount: nothing of these files cached
        sent = _counting(r)
        for path, data, maps in (("/small", small, 0), ("/big", big, 2)):
            ino = r.stat(path)["ino"]
            sent.clear()
            attr = r.run(r.client.open_ino(ino, "reader-session"))
            assert r.run(r.client.read(ino, 0, len(data), attr["size"])) == data
            assert sent.count(Msg.CHUNK_READ) == maps, f"{path}: {[m.name for m in sent]}"
