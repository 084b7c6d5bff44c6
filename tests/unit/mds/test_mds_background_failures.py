"""A background task of the master that dies says so at once, at a level that fits."""

from __future__ import annotations

import asyncio
import logging

import pytest

from chunkfs.common.errors import NotMaster
from chunkfs.mds.server import _log_failure


async def _broken() -> None:
    raise RuntimeError("a bug")


async def _no_master() -> None:
    raise NotMaster("no master is elected right now", leader="")


async def _fine() -> None:
    return None


async def test_a_failed_background_task_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="chunkfs.mds.server")
    for coro in (_broken(), _no_master(), _fine()):
        task = asyncio.get_running_loop().create_task(coro)
        await asyncio.wait([task])
        _log_failure(task)
    records = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert records == [
        (logging.ERROR, "background task _broken failed: a bug"),
        (logging.WARNING, "background task _no_master failed: no master is elected right now"),
    ]
    assert caplog.records[0].exc_info is not None  # the traceback of a bug, not of a known failure
