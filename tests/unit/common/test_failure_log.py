"""A failure retried on a timer is logged at once, then once a minute with a count, and its end once."""

from __future__ import annotations

import logging

import pytest

from chunkfs.common.failure_log import FailureLog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_failure_every_two_seconds_is_a_warning_a_minute_and_its_end_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    log = FailureLog(logging.getLogger("test.failure_log"), "checkpoint", every=60, clock=clock)
    with caplog.at_level(logging.INFO, logger="test.failure_log"):
        for _ in range(91):  # three minutes of a retry every 2 s
            log.failed("disk full")
            clock.now += 2
        log.succeeded()
        log.succeeded()  # nothing more to say
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert lines[0] == ("WARNING", "checkpoint failed: disk full")
    assert [level for level, _ in lines] == ["WARNING"] * 4 + ["INFO"]
    assert lines[1][1] == "checkpoint failed again: disk full (30 times in the last 60 s; failing for 60 s)"
    assert lines[-1][1] == "checkpoint works again after 91 failures over 182 s"


def test_a_new_failure_after_a_success_is_said_at_once(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    log = FailureLog(logging.getLogger("test.failure_log"), "checkpoint", every=60, clock=clock)
    with caplog.at_level(logging.INFO, logger="test.failure_log"):
        log.failed("disk full")
        clock.now += 2
        log.succeeded()
        clock.now += 2
        log.failed("I/O error")
    assert [r.getMessage() for r in caplog.records] == [
        "checkpoint failed: disk full",
        "checkpoint works again after 1 failure over 2 s",
        "checkpoint failed: I/O error",
    ]
