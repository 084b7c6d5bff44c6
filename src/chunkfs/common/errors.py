"""One error hierarchy for the whole project.

Every error carries a wire code (so it crosses the network unchanged) and an
errno (so the mount can hand it to the kernel).  Servers raise these; the RPC
layer turns them into error frames; clients turn error frames back into the
same class.  The message is written for an operator: it says what happened and,
where it helps, what to do.
"""

from __future__ import annotations

import errno as _errno
from typing import ClassVar


class ChunkFSError(Exception):
    """Base of every error ChunkFS raises on purpose."""

    code: ClassVar[str] = "internal"
    errno: ClassVar[int] = _errno.EIO

    def __init__(self, message: str = "", /, **context: object) -> None:
        super().__init__(message or self.__class__.__doc__ or self.code)
        self.message = message or (self.__class__.__doc__ or self.code).strip()
        self.context = context

    def __str__(self) -> str:
        return self.message


class NotFound(ChunkFSError):
    """No such file or directory."""

    code = "not_found"
    errno = _errno.ENOENT


class Exists(ChunkFSError):
    """File exists."""

    code = "exists"
    errno = _errno.EEXIST


class NotADirectory(ChunkFSError):
    """Not a directory."""

    code = "not_dir"
    errno = _errno.ENOTDIR


class IsADirectory(ChunkFSError):
    """Is a directory."""

    code = "is_dir"
    errno = _errno.EISDIR


class DirectoryNotEmpty(ChunkFSError):
    """Directory not empty."""

    code = "not_empty"
    errno = _errno.ENOTEMPTY


class InvalidArgument(ChunkFSError):
    """Invalid argument."""

    code = "invalid"
    errno = _errno.EINVAL


class NameTooLong(InvalidArgument):
    """File name too long."""

    code = "name_too_long"
    errno = _errno.ENAMETOOLONG


class SymlinkLoop(ChunkFSError):
    """Too many levels of symbolic links."""

    code = "symlink_loop"
    errno = _errno.ELOOP


class NotSupported(ChunkFSError):
    """Operation not supported by ChunkFS."""

    code = "not_supported"
    errno = _errno.EOPNOTSUPP


class NoSpace(ChunkFSError):
    """Not enough chunk servers or space to place the data."""

    code = "no_space"
    errno = _errno.ENOSPC


class Busy(ChunkFSError):
    """The file is held by someone else (an exclusive lease)."""

    code = "busy"
    errno = _errno.EBUSY


class AuthenticationFailed(ChunkFSError):
    """The peer did not prove the cluster secret."""

    code = "auth"
    errno = _errno.EACCES


class ProtocolError(ChunkFSError):
    """A malformed, oversized or unexpected message."""

    code = "protocol"
    errno = _errno.EPROTO


class StaleVersion(ChunkFSError):
    """The chunk version does not match the replica's; the chunk map is stale."""

    code = "stale_version"
    errno = _errno.ESTALE


class ChecksumMismatch(ChunkFSError):
    """A replica's data does not match its checksum."""

    code = "checksum"
    errno = _errno.EIO


class NotMaster(ChunkFSError):
    """This metadata server is not the master; ask the one in the leader hint.

    Through the mount it means no master was found within ``master_wait``: an I/O error, as the
    README promises (EAGAIN made programs retry in a loop, and people look for a busy resource).
    """

    code = "not_master"
    errno = _errno.EIO


class Unavailable(ChunkFSError):
    """The service needed for this request cannot be reached."""

    code = "unavailable"
    errno = _errno.EIO


class Timeout(ChunkFSError):
    """A network wait ran past its timeout (through the mount, an I/O error: see `NotMaster`)."""

    code = "timeout"
    errno = _errno.EIO


class ConfigError(ChunkFSError):
    """The configuration is missing or wrong."""

    code = "config"
    errno = _errno.EINVAL


class WritesLost(ChunkFSError):
    """Writes were cut before their size was committed: their writer was taken for dead (a mount silent past
    session-timeout, or a writer lost with the master)."""

    code = "writes_lost"
    errno = _errno.EIO


class InternalError(ChunkFSError):
    """An unexpected fault inside a server; it was logged there."""

    code = "internal"
    errno = _errno.EIO


_BY_CODE: dict[str, type[ChunkFSError]] = {
    cls.code: cls
    for cls in (
        NotFound, Exists, NotADirectory, IsADirectory, DirectoryNotEmpty, InvalidArgument, NameTooLong, SymlinkLoop,
        NotSupported, NoSpace, AuthenticationFailed, ProtocolError, StaleVersion,
        ChecksumMismatch, NotMaster, Unavailable, Timeout, ConfigError, InternalError, Busy, WritesLost,
    )
}


def error_from_code(code: str, message: str, /, **context: object) -> ChunkFSError:
    """Rebuild an error received in an error frame."""
    return _BY_CODE.get(code, InternalError)(message, **context)
