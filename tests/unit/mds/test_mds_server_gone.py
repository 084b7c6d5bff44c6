"""A chunk server's lost connection is a warning and an event only from a server that is still the
master (MetadataServer._server_gone): a master stopped and resumed after its replacement warned, twice
per chunk server, that each went away and that it could not record so."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from chunkfs.common.errors import NotMaster, Timeout
from chunkfs.mds import server as server_module
from chunkfs.mds.server import LiveServer, MetadataServer


def gone(barrier: Any) -> list[tuple[str, str]]:
    """The events `_server_gone` records for CS#4 when the master's read barrier is `barrier`."""
    events: list[tuple[str, str]] = []

    async def event(level: str, message: str) -> None:
        events.append((level, message))

    mds = SimpleNamespace(log=SimpleNamespace(read_barrier=barrier), event=event,
                          healing=SimpleNamespace(settings=lambda: {"cs-offline-timeout": 60.0}))
    server = LiveServer(4, "127.0.0.1:9004", "h4", None)  # type: ignore[arg-type]
    asyncio.run(MetadataServer._server_gone(mds, server))  # type: ignore[arg-type]
    return events


def test_a_master_that_still_is_one_warns() -> None:
    async def confirmed() -> None:
        return None

    ((level, message),) = gone(confirmed)
    assert level == "warning" and message.startswith("CS#4 connection from 127.0.0.1:9004 lost: inactive")


def test_a_former_master_says_so_once_and_records_nothing(caplog: pytest.LogCaptureFixture) -> None:
    async def deposed() -> None:
        raise NotMaster("MDS#1 is not the master: the master is at 127.0.0.1:9102")

    with caplog.at_level(logging.INFO, logger=server_module.logger.name):
        assert gone(deposed) == []
    (record,) = caplog.records
    assert record.levelno == logging.INFO and "CS#4 hung up on this former master" in record.getMessage()


@pytest.mark.parametrize("why", ["refused", "unanswered"])
def test_a_master_that_cannot_confirm_still_warns(monkeypatch: pytest.MonkeyPatch, why: str) -> None:
    """No majority to ask: the loss of a chunk server then matters all the more."""
    monkeypatch.setattr(server_module, "GONE_CONFIRM_TIMEOUT", 0.05)

    async def unconfirmed() -> None:
        if why == "refused":
            raise Timeout("read barrier not confirmed by a quorum within 15s")
        await asyncio.sleep(5)

    ((level, _),) = gone(unconfirmed)
    assert level == "warning"
