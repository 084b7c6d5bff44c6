"""The cluster secret on disk, and rotating it without downtime.

Every node directory and every client configuration holds the cluster secret
in ``secret``.  A rotation puts the new one beside it as ``secret.next``
(`stage`); a node that sees both accepts peers that prove either and, when it
connects, proves the next one to peers that know it.  Once every node has
``secret.next``, each directory's ``secret.next`` replaces its ``secret``
(`promote`) and the old secret is refused from then on.  ``chunkfs secret``
(cli/secret.py) drives these steps; README has the procedure across hosts.

A running node notices the files change by itself (`SecretFiles`, checked at
most once a second, when a handshake needs the secrets): nothing is signalled
and nothing restarts, so the cluster serves throughout.  Connections already
authenticated stay open; every new one needs a secret the node holds now.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from chunkfs.common.config import SECRET_FILE, read_secret, write_secret
from chunkfs.common.durable import fsync_dir
from chunkfs.common.errors import ConfigError

logger = logging.getLogger(__name__)

NEXT_SECRET_FILE = "secret.next"  # noqa: S105 - a file name, not a secret
#: A running node looks at its secret files at most this often, seconds.
RELOAD_INTERVAL = 1.0

_Stamp = tuple[int, int, int] | None


def fingerprint(secret: bytes) -> str:
    """A short name for a secret, for messages and logs (a hash of it: tells secrets apart, reveals nothing)."""
    return hashlib.sha256(b"chunkfs secret fingerprint\0" + secret).hexdigest()[:12]


def read_next_secret(directory: Path) -> bytes | None:
    path = directory / NEXT_SECRET_FILE
    return read_secret(path) if path.exists() else None


def stage(directory: Path, secret: bytes) -> None:
    """Put `secret` beside the current one as the next (written whole, mode 0600)."""
    write_secret(directory / NEXT_SECRET_FILE, secret)


def promote(directory: Path) -> None:
    """The staged secret replaces the current one, in one rename (a crash leaves one or the other)."""
    path = directory / NEXT_SECRET_FILE
    read_secret(path)  # a damaged file is refused here, not discovered by a daemon that can then talk to no one
    os.replace(path, directory / SECRET_FILE)
    fsync_dir(directory)


def unstage(directory: Path) -> bool:
    """Drop a staged secret (a rotation given up); whether there was one."""
    try:
        (directory / NEXT_SECRET_FILE).unlink()
    except FileNotFoundError:
        return False
    fsync_dir(directory)
    return True


def _stamp(path: Path) -> _Stamp:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class SecretFiles:
    """The secrets of a running node, followed on disk so that a rotation reaches it without a restart.

    `get` costs two ``stat`` calls at most once per `RELOAD_INTERVAL` and
    reads the files only when they changed.  A file that cannot be read (a
    half-copied ``secret.next``, say) leaves the node with the secrets it had,
    and a warning says which file.
    """

    def __init__(self, directory: Path, current: bytes, clock: Callable[[], float] = time.monotonic) -> None:
        """`current`: the secret the node was configured with; it holds until the files change.

        The files as they are now count as seen: what the node was given (a
        configuration with another secret, in a test) is not overridden by
        them, only by a later change -- a rotation.
        """
        self.directory = directory
        self.current = current
        self.next: bytes | None = None
        self._clock = clock
        self._checked = clock()
        self._stamps = self._stamps_now()
        try:
            nxt = read_next_secret(directory)
        except ConfigError as exc:
            logger.warning("ignoring a staged cluster secret: %s", exc)
            self._stamps = None  # read again at the next interval
        else:
            self.next = nxt if nxt != current else None

    def _stamps_now(self) -> tuple[_Stamp, _Stamp] | None:
        return _stamp(self.directory / SECRET_FILE), _stamp(self.directory / NEXT_SECRET_FILE)

    def get(self) -> tuple[bytes, bytes | None]:
        """(current secret, next secret or None), as the files say now (checked at most once an interval)."""
        now = self._clock()
        if now - self._checked >= RELOAD_INTERVAL:
            self._checked = now
            self._reload()
        return self.current, self.next

    def _reload(self) -> None:
        stamps = self._stamps_now()
        if stamps == self._stamps:
            return
        try:
            # secret.next first: a `promote` (rename of secret.next over secret) between the two reads
            # then gives (new, new), never (old, nothing), which would refuse the new secret for a while.
            nxt = read_next_secret(self.directory)
            current = read_secret(self.directory / SECRET_FILE)
        except ConfigError as exc:
            logger.warning("keeping the cluster secrets this node has: %s", exc)
            return  # stamps not recorded: tried again at the next interval
        self._stamps = stamps
        if nxt == current:
            nxt = None
        if (current, nxt) != (self.current, self.next):
            if nxt is not None:
                logger.info("cluster secret rotation staged in %s: accepting secrets %s (current) and %s (next)",
                            self.directory, fingerprint(current), fingerprint(nxt))
            else:
                logger.info("cluster secret in %s is now %s; other secrets are refused",
                            self.directory, fingerprint(current))
        self.current, self.next = current, nxt
