"""The loop-lag monitor: it measures stalls and names the call that blocked the loop (issue 14)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from chunkfs.common.loop_lag import LoopLagMonitor, describe_stack
from chunkfs.common.metrics import exposition, make_registry


def blocking_function_for_the_test(seconds: float) -> None:
    time.sleep(seconds)  # stands for a scan of the whole chunk table on the loop


async def test_a_stall_is_measured_and_its_blocking_call_named(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="chunkfs.common.loop_lag")
    monitor = LoopLagMonitor("test-daemon", interval=0.02, watch_every=0.01, stuck_report=0.5)
    monitor.start()
    try:
        await asyncio.sleep(0.1)
        blocking_function_for_the_test(1.0)
        # Lower bounds only: the wake-up due within 0.02 s came at least 0.98 s late.
        for _ in range(100):
            if monitor.stalls:
                break
            await asyncio.sleep(0.02)
    finally:
        await monitor.stop()
    assert monitor.stalls >= 1 and monitor.worst >= 0.9
    stalled = [r.getMessage() for r in caplog.records if "stalled" in r.getMessage()]
    assert stalled and "test-daemon event loop stalled" in stalled[0]
    assert "blocking_function_for_the_test" in stalled[0] and "test_loop_lag.py" in stalled[0]
    # Still stuck after stuck_report: the watchdog thread said so while it lasted.
    stuck = [r.getMessage() for r in caplog.records if "blocked for" in r.getMessage()]
    assert stuck and "blocking_function_for_the_test" in stuck[0]
    text = exposition(make_registry(monitor.families)).decode()
    assert "chunkfs_event_loop_lag_seconds_bucket" in text
    assert "chunkfs_event_loop_lag_max_seconds" in text and "chunkfs_event_loop_stalls_total" in text


def test_warnings_are_rate_limited_and_count_what_they_skipped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="chunkfs.common.loop_lag")
    monitor = LoopLagMonitor("d")
    monitor.note(0.01, now=100.0)
    monitor.note(0.30, now=100.5)
    monitor.note(0.50, now=101.0)  # within the quiet time: counted, not logged
    monitor.note(0.25, now=200.0)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "stalled 0.30s" in lines[0] and "stack not sampled" in lines[0]
    assert "stalled 0.25s" in lines[1] and "1 more stall(s) since the last warning, worst 0.50s" in lines[1]
    assert monitor.stalls == 3 and monitor.worst == 0.5 and monitor.lag.ops == 4


def test_describe_stack_names_innermost_first() -> None:
    import sys

    def inner() -> str:
        return describe_stack(sys._getframe(), depth=2)

    text = inner()
    assert text.startswith("tests/unit/common/test_loop_lag.py:") or "test_loop_lag.py:" in text.split(" <- ")[0]
    assert " in inner <- " in text and text.endswith("in test_describe_stack_names_innermost_first")
    assert describe_stack(None) == "stack not sampled"
