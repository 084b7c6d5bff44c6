"""What a watching client hears from the master (WATCH, INVALIDATE), on the wire, without a mount."""

from __future__ import annotations

from typing import Any

import pytest

from chunkfs.common.config import load_client_config
from chunkfs.common.errors import ProtocolError
from chunkfs.protocol.messages import Msg
from chunkfs.protocol.rpc import Connection, Credentials, connect
from chunkfs.testing.cluster import wait_for


def test_a_watcher_hears_of_every_change_another_client_makes_and_of_none_of_its_own(make_cluster) -> None:
    cluster = make_cluster(n_cs=2)
    config = load_client_config(cluster.name)
    heard: list[dict[str, Any]] = []

    def take(conn: Connection, msg: Msg, h: dict[str, Any], payload: bytes) -> None:
        assert msg == Msg.INVALIDATE
        heard.append(h)

    with cluster.client() as c:
        watcher = c.run(connect(config.mds[0], Credentials(cluster.name, config.secret, "client", "watcher"),
                                notice_handler=take))
        c.run(watcher.call(Msg.WATCH, {}))
        c.mkdir("/d")
        d = c.stat("/d")["ino"]
        c.create("/d/f")
        f = c.stat("/d/f")["ino"]
        c.rename("/d/f", "/d/g")
        c.unlink("/d/g")
        wait_for("four notices", lambda: len(heard) >= 4, timeout=10, pause=0.02)
        assert heard[0] == {"entries": [[1, b"d"]], "inodes": [1]}
        assert heard[1] == {"entries": [[d, b"f"]], "inodes": [d, f]}
        assert heard[2] == {"entries": [[d, b"f"], [d, b"g"]], "inodes": [d, f]}
        assert heard[3] == {"entries": [[d, b"g"]], "inodes": [d, f]}
        # The watcher's own change: nothing for it (its kernel knows).
        c.run(watcher.call(Msg.MKDIR, {"parent": 1, "name": b"mine", "mode": 0o755}))
        c.mkdir("/after")
        wait_for("the next notice", lambda: len(heard) >= 5, timeout=10, pause=0.02)
        assert heard[4]["entries"] == [[1, b"after"]]
        watcher.close()


def test_only_clients_may_watch(make_cluster) -> None:
    cluster = make_cluster(n_cs=1)
    config = load_client_config(cluster.name)
    with cluster.client() as c:
        conn = c.run(connect(config.mds[0], Credentials(cluster.name, config.secret, "cs", "not-a-mount")))
        with pytest.raises(ProtocolError, match="clients only"):
            c.run(conn.call(Msg.WATCH, {}))
        conn.close()
