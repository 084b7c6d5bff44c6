"""CRC32C checksums, computed in hardware.

The `crc32c` package uses SSE4.2 / ARMv8 CRC instructions when the processor
has them (every x86_64 since 2008) and falls back to software otherwise; it
accepts any buffer, so memoryview slices are checksummed without a copy.
"""

from __future__ import annotations

import functools

import crc32c as _crc32c

#: Any object exporting the buffer protocol (bytes, bytearray, memoryview, mmap).
Buffer = bytes | bytearray | memoryview


def crc32c(data: Buffer, value: int = 0) -> int:
    """CRC32C of `data`, continuing from `value`."""
    return _crc32c.crc32c(data, value)


#: Zeros to shift a CRC over (`_shifted`); grown to the longest shift asked for (a checksum block).
_zeros = memoryview(bytes(64 << 10))


@functools.lru_cache(maxsize=4096)
def _zeros_crc(n: int) -> int:
    return _crc32c.crc32c(_zeros[:n])


def _shifted(value: int, n: int) -> int:
    """The CRC register `value` moved past `n` zero bytes, without its start and end inversions.

    `crc32c(zeros, v)` inverts `v` in and the result out; the inversions' share is
    `crc32c(zeros, 0)`, so XOR with it leaves the linear part alone.
    """
    global _zeros
    if n > len(_zeros):
        _zeros = memoryview(bytes(n))
    return _crc32c.crc32c(_zeros[:n], value) ^ _zeros_crc(n)


def crc32c_replaced(block_crc: int, old: Buffer, new: Buffer, after: int) -> int:
    """The CRC32C of a block once its bytes `old` are replaced by `new`, `after` bytes before its end.

    Why: a 4 KiB write into a 64 KiB checksum block would otherwise read and
    checksum the whole block twice (to verify it, then for its new CRC); this
    reads only the bytes it replaces.  A CRC without its inversions is linear,
    and for equal lengths crc32c(A) ^ crc32c(B) is that linear CRC of A ^ B,
    which is zero outside the replaced bytes: moved past the `after` bytes
    that follow them, it is what the block's CRC changes by.

    The block's old CRC is carried, not recomputed, so a block whose old
    bytes did not match their CRC still does not match afterwards (by the
    same difference): corruption is never laundered by a write.
    """
    if len(old) != len(new):
        raise ValueError(f"replaced {len(old)} bytes with {len(new)}")
    delta = _crc32c.crc32c(old) ^ _crc32c.crc32c(new)
    return block_crc ^ (_shifted(delta, after) if after else delta)
