"""Value types for the command line's arguments: each refuses what it cannot take with a one-line error.

argparse calls these on the text given; an `ArgumentTypeError` becomes its
usage line and ``error: argument ...: <message>``, exit status 2.  A number
is bounded before it goes anywhere: one too large for the wire (64 bits)
used to end in a traceback from the encoder.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from chunkfs.common.config import parse_size
from chunkfs.common.errors import ChunkFSError

#: The longest `--retry-for` taken, seconds (a day: a typo must not leave a command hanging for years).
MAX_RETRY_FOR = 86_400.0
#: The largest id or count the cluster's messages carry (a signed 64-bit integer).
MAX_WHOLE = (1 << 63) - 1


def size(text: str) -> int:
    """A size with an optional unit: 64K, 256M, 1G."""
    try:
        return parse_size(text)
    except ChunkFSError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def seconds(text: str) -> float:
    """A duration in seconds, from 0 to MAX_RETRY_FOR."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= MAX_RETRY_FOR:  # also NaN
        raise argparse.ArgumentTypeError(f"expected seconds from 0 to {MAX_RETRY_FOR:g}, got {text!r}")
    return value


def whole(low: int = 0, high: int = MAX_WHOLE) -> Callable[[str], int]:
    """A whole number from `low` to `high` (an id, a sequence number, a count)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected a whole number from {low} to {high}, got {text!r}")
        return value

    return parse


#: The longest path in the cluster a command takes, bytes (Linux's PATH_MAX: a mount could not reach a longer one).
PATH_MAX = 4096


def cluster_path(text: str) -> str:
    """A path in the cluster, from its root; not empty, and no longer than a mount can reach."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path: give one in the cluster, from its root, such as /dir/file")
    if len(text.encode(errors="surrogateescape")) >= PATH_MAX:
        raise argparse.ArgumentTypeError(f"a path of {len(text.encode(errors='surrogateescape'))} bytes: paths in "
                                         f"the cluster are shorter than {PATH_MAX} bytes, as on a local disk")
    return text


def mountpoint(text: str) -> Path:
    """A directory to mount on; not empty (an empty argument meant the working directory)."""
    if not text:
        raise argparse.ArgumentTypeError("an empty mount point: give the directory to mount on")
    return Path(text)


def local_path(text: str) -> Path:
    """A path on this machine ('-' where the command takes standard input or output); not empty."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path: give a local file's name ('-' for standard input/output)")
    return Path(text)
