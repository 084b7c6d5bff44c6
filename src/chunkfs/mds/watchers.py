"""The mounts that cache names and attributes, and the notices that keep their caches true.

A mount lets the kernel cache what it answers (names, attributes) for long
only if it hears of every change made by another client: it sends WATCH on
its connection to the master, and from then on the master sends it an
INVALIDATE notice (no answer) for each namespace or attribute change another
connection made, naming the entries and inodes touched, before that change's
own answer goes out.

A mount trusts those notices only within a lease (WATCH_LEASE): it sends
WATCH again on the same connection every quarter of it, and the master
answers `lease` only after a read barrier, as the master.  A master frozen or
cut off answers nothing, and the mount has the kernel drop what it cached
(client/kernel_cache.py, rule 6); a new master serves clients' changes only
once every lease an earlier one granted has run out.

Nothing here is replicated: watchers are connections to this master.  A
master that stops being the master closes them (`drop_all`), so every
watching mount sees its connection end, has the kernel forget what it
cached, and watches again on the new master.  A notice that cannot be
written at once (the mount reads slower than changes come) closes that
connection for the same reason: a notice is never silently lost.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from chunkfs.common.errors import Unavailable
from chunkfs.common.names import to_bytes
from chunkfs.protocol.messages import FEATURE_CUTS, Msg
from chunkfs.protocol.rpc import Connection

logger = logging.getLogger(__name__)


class Watchers:
    """The watching connections of this master, and what they are told."""

    def __init__(self) -> None:
        #: Each watching connection -> the features it named in its WATCH (FEATURE_CUTS, FEATURE_MAP_CUTS).
        self._conns: dict[Connection, frozenset[str]] = {}

    def __len__(self) -> int:
        return len(self._conns)

    def add(self, conn: Connection, features: Iterable[str] = ()) -> None:
        """Watch `conn` (again: a mount renews its lease with the same WATCH, said once)."""
        new = conn not in self._conns
        self._conns[conn] = frozenset(features)
        if new:
            logger.info("%s watches for changes (%d watching)", conn.peer_name, len(self._conns))

    def discard(self, conn: Connection) -> None:
        self._conns.pop(conn, None)

    def takes(self, conn: Connection, feature: str) -> bool:
        """Whether `conn` watches and named `feature` in its WATCH."""
        return feature in self._conns.get(conn, frozenset())

    def changed(
        self, origin: Connection | None, entries: Iterable[tuple[int, bytes | str]] = (), inodes: Iterable[int] = (),
        cut: dict[str, Any] | None = None,
    ) -> None:
        """Tell every watcher but `origin` (whose own kernel knows) that these names and inodes changed.

        `cut`: the attributes of a file the change cut (truncate, O_TRUNC): the notice says so, with
        the file's new "cut" and size, so that a mount writing it knows which of its writes came
        before the cut before it serves any request that came after (MetadataStore._cut).
        """
        if not self._conns or (len(self._conns) == 1 and origin in self._conns):
            return
        names = dict.fromkeys((parent, to_bytes(name)) for parent, name in entries)
        header: dict[str, Any] = {"entries": [[parent, name] for parent, name in names],
                                  "inodes": list(dict.fromkeys(inodes))}
        with_cut = {**header, "cuts": [[cut["ino"], cut["cut"], cut["size"]]]} if cut and "cut" in cut else header
        for conn, features in list(self._conns.items()):
            if conn is origin:
                continue
            try:
                sent = conn.notify(Msg.INVALIDATE, with_cut if FEATURE_CUTS in features else header)
            except Unavailable:
                sent = False
            if not sent:
                # Closing makes the mount forget everything it cached and watch again: never stale.
                logger.warning("%s reads changes slower than they come: closing its connection", conn.peer_name)
                self.discard(conn)
                conn.close()

    def drop_all(self) -> None:
        """This MDS is no longer the master: end every watch (the mounts watch the new master)."""
        if self._conns:
            logger.info("closing %d watching connection(s): no longer the master", len(self._conns))
        for conn in list(self._conns):
            conn.close()
        self._conns.clear()
