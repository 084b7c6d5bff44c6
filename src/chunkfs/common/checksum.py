"""CRC32C checksums, computed in hardware.

The `crc32c` package uses SSE4.2 / ARMv8 CRC instructions when the processor
has them (every x86_64 since 2008) and falls back to software otherwise; it
accepts any buffer, so memoryview slices are checksummed without a copy.
"""

from __future__ import annotations

import crc32c as _crc32c

#: Any object exporting the buffer protocol (bytes, bytearray, memoryview, mmap).
Buffer = bytes | bytearray | memoryview


def crc32c(data: Buffer, value: int = 0) -> int:
    """CRC32C of `data`, continuing from `value`."""
    return _crc32c.crc32c(data, value)
