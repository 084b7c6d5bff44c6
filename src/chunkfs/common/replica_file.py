"""A replica file's layout, and reading its blocks checked: what the chunk store and a mount's local reads share.

The chunk store (chunk_store.py, whose docstring describes the format) is the
only writer of these files.  Readers are the store itself and a mount on the
same machine reading a replica straight from its file (client/local_reads.py):
both must agree on where a block and its checksum are, so both read through
the functions here.
"""

from __future__ import annotations

import os
import struct
import sys
from array import array
from pathlib import Path

from chunkfs.common.checksum import crc32c
from chunkfs.common.errors import ChecksumMismatch, ConfigError

#: First bytes of every replica file.
MAGIC = b"CHUNKFS\x00"
#: Bumped whenever the on-disk layout changes incompatibly.
FORMAT_VERSION = 1
#: magic, format version, chunk_id, version at creation, chunk_size, block_size.
HEADER_FIELDS = struct.Struct("<8sIQQQI")
#: CRC32C of HEADER_FIELDS, stored right after them.
HEADER_CRC = struct.Struct("<I")
#: Bytes of the header that carry something: its fields and their checksum.
HEADER_USED = HEADER_FIELDS.size + HEADER_CRC.size
#: The header region is padded to this size; the CRC table starts here.
HEADER_SIZE = 4096
#: The CRC table is padded to a multiple of this, so the data region starts on a
#: filesystem-block boundary.
TABLE_ALIGN = 4096
#: Bytes per CRC table entry (one little-endian uint32 per block).
CRC_ENTRY_SIZE = 4

CHUNKS_DIR = "chunks"
REPLICA_SUFFIX = ".chunk"


def replica_name(chunk_id: int, version: int) -> str:
    """File name of a replica: comparing names compares (chunk_id, version)."""
    return f"{chunk_id:016x}_{version:016x}{REPLICA_SUFFIX}"


def chunk_subdir(chunk_id: int) -> str:
    """The subfolder of a store's chunk folder that holds a chunk's replica: one per low byte of its id."""
    return f"{chunk_id & 0xFF:02x}"


def replica_subpath(chunk_id: int, version: int) -> str:
    """Where a replica at `version` lives under a store's chunk folder (one subfolder per low byte of its id).

    A string, not a Path: a mount builds one for each local read, where pathlib's objects cost more
    than the read's system calls."""
    return f"{chunk_subdir(chunk_id)}/{replica_name(chunk_id, version)}"


def replica_path(chunks_dir: Path, chunk_id: int, version: int) -> Path:
    return chunks_dir / replica_subpath(chunk_id, version)


def data_offset(chunk_size: int, block_size: int) -> int:
    """Where the data region starts: after the header and the CRC table, padded to TABLE_ALIGN."""
    table_bytes = chunk_size // block_size * CRC_ENTRY_SIZE
    return HEADER_SIZE + -(-table_bytes // TABLE_ALIGN) * TABLE_ALIGN


def check_header(chunk_id: int, raw: bytes, chunk_size: int, block_size: int) -> None:
    """ChecksumMismatch unless `raw` (the first HEADER_USED bytes) is an intact header of this chunk;
    ConfigError when it is, but for other sizes than the reader's."""
    if len(raw) < HEADER_USED:
        raise ChecksumMismatch(f"chunk {chunk_id:016x}: replica header is truncated", chunk_id=chunk_id)
    fields = raw[: HEADER_FIELDS.size]
    (stored_crc,) = HEADER_CRC.unpack_from(raw, HEADER_FIELDS.size)
    magic, fmt, hdr_chunk_id, _version, hdr_chunk_size, hdr_block_size = HEADER_FIELDS.unpack(fields)
    if magic != MAGIC or crc32c(fields) != stored_crc:
        raise ChecksumMismatch(
            f"chunk {chunk_id:016x}: replica header is corrupt (bad magic or checksum)",
            chunk_id=chunk_id,
        )
    if fmt != FORMAT_VERSION or hdr_chunk_id != chunk_id:
        raise ChecksumMismatch(
            f"chunk {chunk_id:016x}: replica header says format {fmt}, chunk {hdr_chunk_id:016x}",
            chunk_id=chunk_id,
        )
    if hdr_chunk_size != chunk_size or hdr_block_size != block_size:
        raise ConfigError(
            f"chunk {chunk_id:016x}: replica has chunk_size {hdr_chunk_size}/block_size {hdr_block_size}, "
            f"but this store uses {chunk_size}/{block_size}; wrong data directory?",
            chunk_id=chunk_id,
        )


def header_never_written(path: Path) -> bool:
    """Whether the replica file at `path` has no header on disk (empty, or zeros where it goes): made,
    and never synced before its server stopped (a power cut), so nothing in it was ever promised (every
    sync of a replica takes its header to the disk too)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_USED)
    except OSError:
        return False
    return not any(raw)


def pread_full(fd: int, buf: bytearray | memoryview, pos: int) -> int:
    """Fill `buf` from `pos`; stop at end of file. Returns the bytes read.

    The rest of `buf` is left as it was, so a zero-filled buffer yields zeros past
    the end of the file — the sparse data region's tail.
    """
    view = memoryview(buf).cast("B")
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], pos + done)
        if n == 0:
            break
        done += n
    return done


def read_crcs(fd: int, chunk_id: int, first_block: int, count: int) -> array[int]:
    """The CRC entries of `count` blocks from `first_block` (integers, which a write updates in place)."""
    raw = os.pread(fd, count * CRC_ENTRY_SIZE, HEADER_SIZE + first_block * CRC_ENTRY_SIZE)
    if len(raw) != count * CRC_ENTRY_SIZE:
        raise ChecksumMismatch(
            f"chunk {chunk_id:016x}: replica file is shorter than its CRC table",
            chunk_id=chunk_id,
            block=first_block,
        )
    table = array("I", raw)
    if sys.byteorder == "big":
        table.byteswap()
    return table


def read_blocks(
    fd: int, chunk_id: int, start: int, block_size: int, first_block: int, count: int
) -> tuple[bytes | bytearray, int | None]:
    """Read `count` blocks of the data region at `start` and check them: (data, first bad block or None).

    Data first, then the checksums: a write puts its data down before its
    checksum, so a reader racing a write sees a mismatch, never wrong bytes
    that verify.  One pread into a fresh bytes object (no zero-fill, no extra
    copy); only a short read — the sparse tail past the end of the file —
    falls back to a zero-filled buffer.
    """
    size = count * block_size
    pos = start + first_block * block_size
    buf: bytes | bytearray = os.pread(fd, size, pos)
    if len(buf) < size:
        got = len(buf)
        padded = bytearray(size)
        padded[:got] = buf
        pread_full(fd, memoryview(padded)[got:], pos + got)
        buf = padded
    crcs = read_crcs(fd, chunk_id, first_block, count)
    view = memoryview(buf)
    for i, expected in enumerate(crcs):
        if crc32c(view[i * block_size : (i + 1) * block_size]) != expected:
            return buf, first_block + i
    return buf, None
