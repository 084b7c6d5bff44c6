"""OPEN and SETATTR a mount's kernel sent through a name it kept carry that name, and the master checks it.

Another client may have renamed the file away a moment before (log rotation):
its notice to the mount is still on its way, and the kernel's name still leads
to the file.  On a local disk the old name leads nowhere, so the master refuses
the request (the mount answers ESTALE and its kernel looks the name up again).
"""

from __future__ import annotations

from typing import Any

import pytest

from chunkfs.common.config import load_client_config
from chunkfs.common.errors import NotFound
from chunkfs.protocol.messages import ROOT_INO, Msg
from chunkfs.protocol.rpc import Credentials, connect
from chunkfs.testing.cluster import master_id


def test_a_request_by_a_name_the_file_no_longer_has_is_refused(make_cluster) -> None:
    cluster = make_cluster(n_cs=2)
    with cluster.client() as c:
        c.create("/log")
        c.mkdir("/dir")
        ino, dir_ino = c.stat("/log")["ino"], c.stat("/dir")["ino"]
        c.run(c.client.setattr(ino, linked=True, at=(ROOT_INO, b"log"), mode=0o600))  # the name leads there
        c.rename("/log", "/log.1")
        c.rename("/dir", "/dir.old")
        for at in ((ROOT_INO, b"log"), (dir_ino, b"log")):
            with pytest.raises(NotFound, match="renamed by another client"):
                c.run(c.client.setattr(ino, linked=True, at=at, mode=0o644))
        assert c.stat("/log.1")["mode"] & 0o777 == 0o600  # unchanged
        c.run(c.client.setattr(ino, linked=True, at=(ROOT_INO, b"log.1"), mode=0o640))
        assert c.stat("/log.1")["mode"] & 0o777 == 0o640
        # A directory may be reached from a working directory, under no name: never refused for its name.
        c.run(c.client.setattr(dir_ino, linked=True, at=(ROOT_INO, b"dir"), mode=0o700))
        assert c.stat("/dir.old")["mode"] & 0o777 == 0o700


def test_a_retry_of_a_request_that_was_done_is_answered_as_it_was(make_cluster) -> None:
    """A change made, its answer lost, the file renamed meanwhile: the retry must not fail falsely."""
    cluster = make_cluster(n_cs=2)
    config = load_client_config(cluster.name)
    with cluster.client() as c:
        c.create("/f")
        ino = c.stat("/f")["ino"]
        master = next(m["addr"] for m in c.cluster_stat()["mds"] if m["id"] == master_id(c))
        conn = c.run(connect(master, Credentials(cluster.name, config.secret, "client", "retrier")))
        try:
            header: dict[str, Any] = {"ino": ino, "size": None, "mode": 0o600, "mtime_ns": None, "atime_ns": None,
                                      "linked": True, "at": [ROOT_INO, b"f"], "cid": "retrier-1", "seq": 1, "low": 1}
            first = c.run(conn.call(Msg.SETATTR, header))[0]
            c.rename("/f", "/g")
            assert c.run(conn.call(Msg.SETATTR, header))[0] == first
        finally:
            conn.close()
