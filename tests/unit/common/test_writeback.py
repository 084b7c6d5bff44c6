"""Writeback started early for large writes (common/writeback.py)."""

from __future__ import annotations

import os
from pathlib import Path

from chunkfs.common.writeback import start_writeback


def test_writeback_starts_on_a_file_and_a_bad_descriptor_is_refused(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, os.urandom(1 << 20), 0)
        assert start_writeback(fd, 0, 1 << 20)
        os.fsync(fd)
        assert os.pread(fd, 16, 0) and os.fstat(fd).st_size == 1 << 20
    finally:
        os.close(fd)
    assert not start_writeback(fd, 0, 4096)  # closed: EBADF, reported as False, never raised
