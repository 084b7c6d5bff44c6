"""A chunk server counts as errors (metrics, `top`'s E flag) only reads and writes that failed, not refusals.

A reader or writer with an old map meets "no replica here" or "stale version" in a healthy cluster
and asks the master again: a probe saw every server of a fresh cluster flagged E for those.
"""

from __future__ import annotations

import asyncio

from chunkfs.common.errors import ChecksumMismatch, NoSpace, NotFound, StaleVersion
from chunkfs.common.metrics import IoCounters


def test_refusals_are_not_counted_and_failures_are() -> None:
    for refusal in (StaleVersion("chunk 1: version 3, not 2"), NotFound("chunk 1: no replica on this server"),
                    asyncio.CancelledError()):
        counters = IoCounters()
        counters.failed(refusal)
        assert counters.errors == 0, refusal
    for failure in (OSError(5, "Input/output error"), ChecksumMismatch("block 3"), NoSpace("disk full")):
        counters = IoCounters()
        counters.failed(failure)
        assert counters.errors == 1, failure
