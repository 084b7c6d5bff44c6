"""The rules for names in the namespace, shared by the master, the client library and the mount.

A name is bytes, as on every POSIX file system: any byte but ``/`` and NUL,
so trees written with another encoding (Latin-1, Shift-JIS) copy in and out
unchanged.  The client library takes ``str`` too and encodes it as the
operating system does (UTF-8, with ``surrogateescape`` for bytes that are
not UTF-8, so a name read back as text names the same file).

Checked on both sides: the master is the authority (a hostile or old client
cannot store a bad name), and the mount checks first so that a name the
master would refuse costs no round trip and gets the errno a local disk
gives (``ENAMETOOLONG``, not ``ENOENT``, for a lookup of a 300-byte name).
"""

from __future__ import annotations

from chunkfs.common.errors import InvalidArgument, NameTooLong

#: Longest name of one directory entry, in bytes (NAME_MAX on Linux).
MAX_NAME_LEN = 255
#: Longest symbolic-link target, in bytes (PATH_MAX less its terminating NUL).
MAX_SYMLINK_LEN = 4095


def to_bytes(name: str | bytes) -> bytes:
    """A name (or path) as the bytes the namespace keeps: `str` encoded as the OS does (os.fsencode)."""
    return name if isinstance(name, bytes) else name.encode("utf-8", "surrogateescape")


def to_text(name: bytes) -> str:
    """A name as text that round-trips through `to_bytes` (os.fsdecode)."""
    return name.decode("utf-8", "surrogateescape")


def shown(name: str | bytes) -> str:
    """A name fit for a message or a terminal: bytes that are not UTF-8 become U+FFFD."""
    return repr(to_bytes(name).decode("utf-8", "replace"))


def check_name_length(name: str | bytes) -> None:
    """`NameTooLong` for a component over `MAX_NAME_LEN` bytes: what every call on such a name answers."""
    size = len(to_bytes(name))
    if size > MAX_NAME_LEN:
        raise NameTooLong(f"file name of {size} bytes is longer than {MAX_NAME_LEN} bytes")


def check_name(name: str | bytes) -> None:
    """A name a new entry may take: not empty, not ``.`` or ``..``, no ``/`` or NUL, not too long."""
    check_name_length(name)
    raw = to_bytes(name)
    if not raw or raw in (b".", b"..") or b"/" in raw or b"\0" in raw:
        raise InvalidArgument(f"bad file name {shown(raw)}")


def check_symlink_target(target: bytes) -> None:
    """A symbolic link's target: 1 to `MAX_SYMLINK_LEN` bytes, no NUL (what symlink(2) accepts)."""
    if not target:
        raise InvalidArgument("a symbolic link needs a non-empty target")
    if len(target) > MAX_SYMLINK_LEN:
        raise NameTooLong(f"symbolic-link target of {len(target)} bytes is longer than {MAX_SYMLINK_LEN} bytes")
    if b"\0" in target:
        raise InvalidArgument("a symbolic-link target cannot contain a NUL byte")
