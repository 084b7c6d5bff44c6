"""A FUSE request that takes long is named in the log when it ends: an unmount waits for it too, and the
log then says which request held it (`fuse_ops.fuse_errors`)."""

from __future__ import annotations

import asyncio
import errno
import logging

import pytest

from chunkfs.client import fuse_ops


async def test_a_slow_request_is_logged_and_a_quick_one_is_not(monkeypatch, caplog) -> None:
    monkeypatch.setattr(fuse_ops, "SLOW_REQUEST_S", 0.05)

    @fuse_ops.fuse_errors
    async def lookup(pause: float) -> str:
        await asyncio.sleep(pause)
        return "found"

    with caplog.at_level(logging.WARNING, logger="chunkfs.client.fuse_ops"):
        assert await lookup(0) == "found"
        assert not caplog.records
        assert await lookup(0.1) == "found"
    assert len(caplog.records) == 1
    assert "a FUSE lookup took" in caplog.records[0].getMessage()


@pytest.mark.parametrize("pause", [0.0, 0.1])
async def test_an_error_answered_after_a_long_wait_is_still_the_errno(monkeypatch, pause: float) -> None:
    monkeypatch.setattr(fuse_ops, "SLOW_REQUEST_S", 0.05)

    @fuse_ops.fuse_errors
    async def getattr_(pause: float) -> None:
        await asyncio.sleep(pause)
        raise fuse_ops.NotFound("no such inode")

    with pytest.raises(fuse_ops.pyfuse3.FUSEError) as err:
        await getattr_(pause)
    assert err.value.errno == errno.ENOENT


async def test_a_request_refused_as_malformed_is_a_warning_saying_the_upgrade_order(monkeypatch, caplog) -> None:
    """An upgrade probe: a new mount's opens refused by older metadata servers failed with EPROTO and the
    mount's log said nothing.  Said once, then once a minute (the failures go on at every open)."""
    monkeypatch.setattr(fuse_ops, "_MALFORMED", fuse_ops.FailureLog(fuse_ops.logger, fuse_ops._MALFORMED.what))

    @fuse_ops.fuse_errors
    async def open_(name: str) -> None:
        raise fuse_ops.ProtocolError("OPEN: unknown field 'read_only'")

    with caplog.at_level(logging.WARNING, logger="chunkfs.client.fuse_ops"):
        for _ in range(3):
            with pytest.raises(fuse_ops.pyfuse3.FUSEError) as err:
                await open_("f")
            assert err.value.errno == errno.EPROTO
    assert len(caplog.records) == 1
    said = caplog.records[0].getMessage()
    assert "unknown field 'read_only'" in said and "upgrade the metadata servers" in said
