"""The rules for names in the namespace, shared by the master, the client library and the mount.

Checked on both sides: the master is the authority (a hostile or old client
cannot store a bad name), and the mount checks first so that a name the
master would refuse costs no round trip and gets the errno a local disk
gives (``ENAMETOOLONG``, not ``ENOENT``, for a lookup of a 300-byte name).
"""

from __future__ import annotations

from chunkfs.common.errors import InvalidArgument, NameTooLong

#: Longest name of one directory entry, in bytes of UTF-8 (NAME_MAX on Linux).
MAX_NAME_LEN = 255
#: Longest symbolic-link target, in bytes (PATH_MAX less its terminating NUL).
MAX_SYMLINK_LEN = 4095


def check_name_length(name: str | bytes) -> None:
    """`NameTooLong` for a component over `MAX_NAME_LEN` bytes: what every call on such a name answers."""
    size = len(name) if isinstance(name, bytes) else len(name.encode(errors="surrogateescape"))
    if size > MAX_NAME_LEN:
        raise NameTooLong(f"file name of {size} bytes is longer than {MAX_NAME_LEN} bytes")


def check_name(name: str) -> None:
    """A name a new entry may take: not empty, not ``.`` or ``..``, no ``/`` or NUL, not too long."""
    check_name_length(name)
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise InvalidArgument(f"bad file name {name!r}")


def check_symlink_target(target: bytes) -> None:
    """A symbolic link's target: 1 to `MAX_SYMLINK_LEN` bytes, no NUL (what symlink(2) accepts)."""
    if not target:
        raise InvalidArgument("a symbolic link needs a non-empty target")
    if len(target) > MAX_SYMLINK_LEN:
        raise NameTooLong(f"symbolic-link target of {len(target)} bytes is longer than {MAX_SYMLINK_LEN} bytes")
    if b"\0" in target:
        raise InvalidArgument("a symbolic-link target cannot contain a NUL byte")
