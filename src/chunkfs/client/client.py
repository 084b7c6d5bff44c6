"""The ChunkFS client library: an asyncio API and a thin synchronous wrapper.

`Client` speaks in inodes (what the mount needs) and in paths (what scripts
and the CLI need).  `SyncClient` runs a `Client` on its own event loop thread,
for code that is not asynchronous.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from chunkfs.client.chunk_io import ChunkIO
from chunkfs.common.change_time import stamp_ns
from chunkfs.common.config import ClientConfig, load_client_config
from chunkfs.common.errors import ChunkFSError, ConfigError, InvalidArgument, IsADirectory, NotADirectory, Unavailable
from chunkfs.common.names import check_name_length, to_bytes, to_text
from chunkfs.common.secret_files import SecretFiles
from chunkfs.protocol.mds_link import MdsLink
from chunkfs.protocol.messages import Msg
from chunkfs.protocol.rpc import Credentials, connect
from chunkfs.protocol.tls import node_tls

T = TypeVar("T")
READDIR_PAGE = 1000
#: A recursive set-replicas or set-placement is answered once the master has walked the whole subtree,
#: a page (one commit) at a time: about 250 pages per 10^6 files.  Longer than one request may wait.
RECURSIVE_TIMEOUT = 600.0
#: How long `Client.close` waits for its connections to be gone, seconds.
CLOSE_TIMEOUT = 2.0


def split_path(path: str) -> tuple[str, str]:
    """``/a/b/c`` -> (``/a/b``, ``c``); the root has no parent."""
    parts = [p for p in path.split("/") if p]
    if not parts:
        raise InvalidArgument("the root directory has no parent")
    for part in parts:
        check_name_length(part)
    return "/" + "/".join(parts[:-1]), parts[-1]


async def ping_node(addr: str, creds: Credentials, timeout: float) -> dict[str, Any]:
    """Connect to one daemon with `creds` (proving them) and ask who it is: its role and name."""
    conn = await connect(addr, creds, timeout=timeout)
    try:
        reply, _ = await conn.call(Msg.PING, {}, timeout=timeout)
        return reply
    finally:
        conn.close()
        await conn.wait_lost(timeout)


async def first_to_answer(addrs: Sequence[str], creds: Credentials, timeout: float) -> tuple[str, list[ChunkFSError]]:
    """The first of `addrs` that answers a PING with `creds` ("" if none), and why each one before it did not."""
    failed: list[ChunkFSError] = []
    for addr in addrs:
        try:
            await ping_node(addr, creds, timeout)
        except ChunkFSError as exc:
            failed.append(exc)
            continue
        except OSError as exc:  # (a connection lost under the PING)
            failed.append(Unavailable(f"{addr}: {exc}"))
            continue
        return addr, failed
    return "", failed


class Client:
    def __init__(self, config: ClientConfig, name: str | None = None) -> None:
        self.config = config
        self.chunk_size = config.cluster.chunk_size
        tls = node_tls(config.directory, config.cluster) if config.directory is not None else None
        if config.cluster.tls and tls is None:
            raise ConfigError(f"cluster {config.cluster.name!r} runs TLS: its client configuration needs a "
                              "folder with the client's certificate (load it with load_client_config)")
        # Read from a folder: follow its secret files, so a long-lived client (a mount) lives through a rotation.
        files = SecretFiles(config.directory, config.secret) if config.directory is not None else None
        self.creds = Credentials(config.cluster.name, config.secret, "client", name or f"client-{os.getpid()}",
                                 tls=tls, secret_files=files, uuid=config.cluster.uuid)
        self.mds = MdsLink(config.mds, self.creds)
        self.io = ChunkIO(self)
        #: Called with the attributes of the directories a namespace change touched, as the master
        #: answered them (the mount answers the kernel's next getattr of them from these).
        self.on_dir_attrs: Callable[[list[dict[str, Any]]], None] | None = None

    @classmethod
    def for_cluster(cls, name: str) -> Client:
        return cls(load_client_config(name))

    async def close(self) -> None:
        conns = self.io.connections() + self.mds.connections()
        self.io.close()
        self.mds.close()
        # Bounded: a TLS connection's goodbye is a round trip, and callers may stop the loop next.
        await asyncio.gather(*(conn.wait_lost(CLOSE_TIMEOUT) for conn in conns))

    # -- inode API -----------------------------------------------------------

    async def getattr(self, ino: int) -> dict[str, Any]:
        return (await self.mds.call(Msg.GETATTR, {"ino": ino}))["attr"]

    async def lookup(self, parent: int, name: str | bytes) -> dict[str, Any]:
        return (await self.mds.call(Msg.LOOKUP, {"parent": parent, "name": to_bytes(name)}))["attr"]

    async def _change(self, msg: Msg, header: dict[str, Any]) -> dict[str, Any]:
        """A namespace change; the directories' new attributes in its reply go to `on_dir_attrs`."""
        reply = await self.mds.call(msg, header)
        parents = reply.get("parents")
        if parents and self.on_dir_attrs is not None:
            self.on_dir_attrs(parents)
        return reply

    async def mkdir_at(self, parent: int, name: str | bytes, mode: int = 0o755) -> dict[str, Any]:
        return (await self._change(Msg.MKDIR, {"parent": parent, "name": to_bytes(name), "mode": mode}))["attr"]

    async def create_at(
        self, parent: int, name: str | bytes, mode: int = 0o644, exclusive: bool = False, *,
        session: str | None = None, truncate: bool = False, oseq: int = 0, read_only: bool = False,
    ) -> dict[str, Any]:
        """Create a file (or, not `exclusive`, open the one there); `session`: a mount holds it open.

        `oseq`: the mount's number for this registration (see `release_inos`); `read_only`: see `open_ino`.
        """
        header: dict[str, Any] = {"parent": parent, "name": to_bytes(name), "mode": mode, "exclusive": exclusive}
        if session is not None:
            header["session"] = session
            header["oseq"] = oseq
            if read_only:
                header["read_only"] = True
        if truncate:
            header["truncate"] = True
        attr = (await self._change(Msg.CREATE, header))["attr"]
        if truncate:
            self.io.forget(attr["ino"])
        return attr

    async def symlink_at(self, parent: int, name: str | bytes, target: bytes) -> dict[str, Any]:
        return (await self._change(Msg.SYMLINK, {"parent": parent, "name": to_bytes(name), "target": target}))["attr"]

    async def readlink(self, ino: int) -> bytes:
        attr = await self.getattr(ino)
        if attr["type"] != "l":
            raise InvalidArgument(f"inode {ino} is not a symbolic link")
        return bytes(attr["target"])

    async def unlink_at(self, parent: int, name: str | bytes) -> None:
        await self._change(Msg.UNLINK, {"parent": parent, "name": to_bytes(name)})

    async def rmdir_at(self, parent: int, name: str | bytes) -> None:
        await self._change(Msg.RMDIR, {"parent": parent, "name": to_bytes(name)})

    async def rename_at(
        self, parent: int, name: str | bytes, new_parent: int, new_name: str | bytes, noreplace: bool = False,
        *, session: str | None = None, hold: int = 0,
    ) -> int:
        """Rename; with a mount's `session` and `hold` (a registration number, as `open_ino`'s `oseq`),
        the file the rename replaces stays held by that session until released: its inode, or 0."""
        header: dict[str, Any] = {
            "parent": parent, "name": to_bytes(name), "new_parent": new_parent, "new_name": to_bytes(new_name)}
        if noreplace:
            header["noreplace"] = True
        if session is not None and hold:
            header["session"], header["hold"] = session, hold
        return int((await self._change(Msg.RENAME, header)).get("held") or 0)

    # -- open files (the mount) ----------------------------------------------

    async def open_ino(
        self, ino: int, session: str, truncate: bool = False, linked: bool = False, oseq: int = 0,
        at: tuple[int, bytes] | None = None, read_only: bool = False,
    ) -> dict[str, Any]:
        """Register `ino` as open by a mount's `session` (it outlives an unlink until released); its attributes.

        `linked`: the caller reached the inode by a name, so NotFound when it has none any more;
        `at`: that name, (parent, name), so NotFound when it leads elsewhere (FEATURE_NAMED).
        `oseq`: the mount's number for this registration (see `release_inos`).  `read_only`: this open
        cannot write, so the master need not wait for its close to trim what a dead mount wrote past the
        file's size (a registration without it may write; a new master learns it from `renew_session`).
        """
        header = {"ino": ino, "session": session, "truncate": truncate, "linked": linked, "oseq": oseq}
        if at is not None:
            header["at"] = list(at)
        if read_only:
            header["read_only"] = True
        reply = await self.mds.call(Msg.OPEN, header)
        if truncate:
            self.io.forget(ino)
        self.io.opened(ino, reply.get("chunks_version"), reply.get("first"))
        return reply["attr"]

    async def release_inos(self, session: str, releases: dict[int, int], read_only: list[int] | None = None) -> None:
        """The mount's last close of files: inode -> the number (`oseq`) of the last registration it counts.

        The master keeps a file held if this mount registered it again later: an open sent
        before this release may be answered after it.  `read_only`: those of `releases` not
        released but held only to read from now on (FEATURE_READ_HOLDS).
        """
        header: dict[str, Any] = {"session": session, "inos": list(releases), "uptos": list(releases.values())}
        if read_only:
            header["read_only"] = read_only
        await self.mds.call(Msg.RELEASE, header)

    async def renew_session(
        self, session: str, open_inos: list[int], complete: bool = True, oseqs: list[int] | None = None,
        read_only: list[int] | None = None,
    ) -> bool:
        """Keep a mount's session alive, (re-)registering `open_inos`; False if the master did not know it.

        `complete`: no more files follow (the last page of a re-registration, or a plain renewal).
        `oseqs`: each file's latest registration number, as the mount's releases count them.
        `read_only`: those of `open_inos` the mount holds only to read (see `open_ino`).
        """
        header = {"session": session, "open": open_inos, "complete": complete,
                  "oseqs": oseqs if oseqs is not None else [0] * len(open_inos)}
        if read_only:
            header["read_only"] = read_only
        reply = await self.mds.call(Msg.SESSION, header)
        return bool(reply["known"])

    async def end_session(self, session: str) -> None:
        """The mount unmounts: what it held open is released, and no new master waits for it."""
        await self.mds.call(Msg.SESSION, {"session": session, "open": [], "end": True})

    async def readdir_page(self, ino: int, after: bytes, limit: int) -> dict[str, Any]:
        """One page of a directory after the name `after`, with each entry's attributes.

        The reply: ``entries`` ([name, ino, type, attr], ...), ``more``, and for the
        first page (`after` empty) ``parent``, the inode of ``..``.
        """
        return await self.mds.call(Msg.READDIR, {"ino": ino, "after": after, "limit": limit, "attrs": True})

    async def file_lease(self, ino: int, holder: str, op: str) -> float:
        """An exclusive lease on a file for one mount: op "acquire", "renew" or "release"; seconds it lasts."""
        return float((await self.mds.call(Msg.FILE_LEASE, {"ino": ino, "holder": holder, "op": op}))["ttl"])

    async def readdir(self, ino: int) -> list[tuple[str, int, str]]:
        entries: list[tuple[str, int, str]] = []
        after = b""
        while True:
            reply = await self.mds.call(Msg.READDIR, {"ino": ino, "after": after, "limit": READDIR_PAGE})
            # Names as text that names the same file again (os.fsdecode: bytes that are not UTF-8 survive).
            entries.extend((to_text(e[0]), e[1], e[2]) for e in reply["entries"])
            if not reply["more"] or not reply["entries"]:
                return entries
            after = to_bytes(entries[-1][0])

    async def setattr(
        self, ino: int, linked: bool = False, at: tuple[int, bytes] | None = None, **changes: Any
    ) -> dict[str, Any]:
        """Change `size`, `mode`, `mtime_ns`, `atime_ns` (nanoseconds); the others stay as they are.

        `linked` and `at`: as `open_ino`'s.
        """
        header = {"ino": ino, "size": None, "mode": None, "mtime_ns": None, "atime_ns": None, **changes}
        if linked:
            header["linked"] = True
        if at is not None:
            header["at"] = list(at)
        attr = (await self.mds.call(Msg.SETATTR, header))["attr"]
        if changes.get("size") is not None:
            self.io.forget(ino)
        return attr

    async def read(self, ino: int, offset: int, length: int, file_size: int | None = None) -> bytes:
        """Read up to `length` bytes; short at the end of the file."""
        if file_size is None:
            file_size = (await self.getattr(ino))["size"]
        length = max(0, min(length, file_size - offset))
        return await self.io.read(ino, offset, length) if length else b""

    async def write(
        self, ino: int, offset: int, data: bytes | bytearray | memoryview, sync: bool = False, extend: bool = True
    ) -> int:
        """Write on every replica, then (unless `extend` is False) make the new size known to the master."""
        if offset < 0:
            raise InvalidArgument("offset must not be negative")
        await self.io.write(ino, offset, data, sync)
        if extend:
            await self.extend(ino, offset + len(data))
        return len(data)

    async def extend(
        self, ino: int, size: int, mtime_ns: int | None = None, cut: int | None | Callable[[], int | None] = None
    ) -> dict[str, Any]:
        """Grow the file's size to at least `size` (never shrinks it); mtime is the write's (default now).

        `cut`: the file's last cut (attribute "cut") known when the writes were made; the master leaves
        the size alone if the file was cut since (MetadataStore._cut).  None: not known (a master
        of an earlier version does not say it).  A function: asked when the request goes out.
        """
        base = {"ino": ino, "size": size, "mtime_ns": stamp_ns() if mtime_ns is None else mtime_ns}

        def header() -> dict[str, Any]:
            known = cut() if callable(cut) else cut
            return base if known is None else {**base, "cut": known}

        return (await self.mds.call(Msg.EXTEND, header))["attr"]

    async def fsync(self, ino: int) -> None:
        await self.io.fsync(ino)

    async def truncate(self, ino: int, size: int) -> dict[str, Any]:
        return await self.setattr(ino, size=size)

    # -- path API ------------------------------------------------------------

    async def resolve(self, path: str, follow: bool = False) -> dict[str, Any]:
        """The inode at `path`; symbolic links on the way are followed, the last one only if `follow`."""
        for part in path.split("/"):
            check_name_length(part)
        header: dict[str, Any] = {"path": to_bytes(path)}
        if follow:
            header["follow"] = True
        return (await self.mds.call(Msg.RESOLVE, header))["attr"]

    async def parent_of(self, path: str) -> tuple[int, str]:
        """The inode of the directory `path` is in, and its last name."""
        parent_path, name = split_path(path)
        parent = await self.resolve(parent_path, follow=True)
        if parent["type"] != "d":
            raise NotADirectory(f"{parent_path} is not a directory")
        return parent["ino"], name

    async def stat(self, path: str) -> dict[str, Any]:
        return await self.resolve(path)

    async def listdir(self, path: str) -> list[tuple[str, int, str]]:
        attr = await self.resolve(path)
        if attr["type"] != "d":
            raise NotADirectory(f"{path} is not a directory")
        return await self.readdir(attr["ino"])

    async def mkdir(self, path: str, mode: int = 0o755) -> dict[str, Any]:
        parent, name = await self.parent_of(path)
        return await self.mkdir_at(parent, name, mode)

    async def create(self, path: str, mode: int = 0o644, exclusive: bool = False) -> dict[str, Any]:
        parent, name = await self.parent_of(path)
        return await self.create_at(parent, name, mode, exclusive)

    async def unlink(self, path: str) -> None:
        await self.unlink_at(*await self.parent_of(path))

    async def rmdir(self, path: str) -> None:
        await self.rmdir_at(*await self.parent_of(path))

    async def rename(self, old: str, new: str) -> None:
        await self.rename_at(*await self.parent_of(old), *await self.parent_of(new))

    async def symlink(self, target: str | bytes, path: str) -> dict[str, Any]:
        """Make `path` a symbolic link to `target` (like ``ln -s target path``)."""
        parent, name = await self.parent_of(path)
        return await self.symlink_at(parent, name, target.encode() if isinstance(target, str) else target)

    async def set_replicas(self, path: str, replicas: int, min_replicas: int, recursive: bool = False) -> int:
        attr = await self.resolve(path)
        reply = await self.mds.call(Msg.SET_REPLICAS, {
            "ino": attr["ino"], "replicas": replicas, "min_replicas": min_replicas, "recursive": recursive},
            timeout=RECURSIVE_TIMEOUT if recursive else None)
        return int(reply["changed"])

    async def open(self, path: str, create: bool = False, truncate: bool = False) -> File:
        attr = await (self.create(path) if create else self.resolve(path, follow=True))
        if attr["type"] == "d":
            raise IsADirectory(f"{path} is a directory")
        if truncate and attr["size"]:
            attr = await self.truncate(attr["ino"], 0)
        return File(self, attr)

    async def set_placement(self, path: str, domain: str | None, tier: int | None, recursive: bool = False) -> int:
        """Set a failure domain or a storage tier on `path` (and below it); the number of items changed."""
        attr = await self.resolve(path)
        reply = await self.mds.call(Msg.SET_PLACEMENT, {
            "ino": attr["ino"], "failure_domain": domain, "tier": tier, "recursive": recursive},
            timeout=RECURSIVE_TIMEOUT if recursive else None)
        return int(reply["changed"])

    # -- the cluster ------------------------------------------------------------

    async def get_config(self) -> dict[str, float]:
        """The cluster settings in force (healing, scrubbing, timeouts)."""
        return dict((await self.mds.call(Msg.GET_CONFIG, {}))["settings"])

    async def set_config(self, values: dict[str, str]) -> dict[str, float]:
        """Change cluster settings (KEY -> value as text, checked by the master); the settings after."""
        return dict((await self.mds.call(Msg.SET_CONFIG, {"values": values}))["settings"])

    async def rm_cs(self, cs_id: int, cancel: bool = False) -> dict[str, Any]:
        """Drain a chunk server and remove it once empty (or cancel): {left, removed}."""
        return await self.mds.call(Msg.RM_CS, {"id": cs_id, "cancel": cancel})

    async def add_mds(self, addr: str) -> dict[str, Any]:
        """Register a new metadata server's address: {id, members}."""
        return await self.mds.call(Msg.MDS_ADD, {"addr": addr})

    async def remove_mds(self, node_id: int) -> str | None:
        """Take a metadata server out of the group; its address, when the master says it (an older one does not)."""
        reply = await self.mds.call(Msg.MDS_REMOVE, {"id": node_id})
        return reply.get("addr")

    async def cluster_stat(self) -> dict[str, Any]:
        return (await self.mds.call(Msg.CLUSTER_STAT, {}))["stat"]

    async def events(self, since: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        return (await self.mds.call(Msg.GET_EVENTS, {"since": since, "limit": limit}))["events"]


class File:
    """An open file: a position-free handle over one inode."""

    def __init__(self, client: Client, attr: dict[str, Any]) -> None:
        self.client = client
        self.ino: int = attr["ino"]
        self.size: int = attr["size"]

    async def read(self, offset: int, length: int) -> bytes:
        return await self.client.read(self.ino, offset, length, self.size)

    async def write(self, offset: int, data: bytes | bytearray | memoryview, sync: bool = False) -> int:
        written = await self.client.write(self.ino, offset, data, sync)
        self.size = max(self.size, offset + written)
        return written

    async def truncate(self, size: int) -> None:
        self.size = (await self.client.truncate(self.ino, size))["size"]

    async def fsync(self) -> None:
        await self.client.fsync(self.ino)

    async def close(self) -> None:
        await self.client.fsync(self.ino)


class SyncClient:
    """The same API, blocking: a `Client` on an event loop in a background thread."""

    def __init__(self, config: ClientConfig, name: str | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="chunkfs-client", daemon=True)
        self._thread.start()
        self.client = Client(config, name)

    @classmethod
    def for_cluster(cls, name: str) -> SyncClient:
        return cls(load_client_config(name))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.client, name)
        if not asyncio.iscoroutinefunction(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            return self.run(method(*args, **kwargs))

        return call

    def close(self) -> None:
        self.run(self.client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
