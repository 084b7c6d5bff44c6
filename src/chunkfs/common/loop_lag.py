"""How late a daemon's event loop runs, and what it was doing when it stalled.

Everything a daemon does — requests, Raft heartbeats, the replication tick —
shares one event loop, so one slow call delays all of them; on the master a
stall of a second or two costs the leadership (issue 14: 20 elections from its
own scans).  `LoopLagMonitor` makes that visible:

- a task wakes every `INTERVAL` and measures how late it woke: that lag is the
  ``chunkfs_event_loop_lag_seconds`` histogram (and the worst one a gauge);
- a watchdog thread checks that the task keeps waking; once the loop has been
  stuck for `STALL_WARNING`, it takes the loop thread's stack with
  `sys._current_frames()` — the call that blocks it, caught in the act, which
  asyncio's debug mode (`slow_callback_duration`) would only name as a handle,
  at a cost on every callback;
- when the loop runs again, one WARNING says how long it stalled and where
  (rate-limited: a loop that stalls every second gets one line per
  `WARNING_EVERY` with the count and the worst).  A stall still going on after
  `STUCK_REPORT` is reported by the thread itself, since the loop cannot.

The thread takes the GIL for a few microseconds 20 times a second; the task
wakes 10 times a second.  Neither allocates per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import time
import traceback
from types import FrameType

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from chunkfs.common.metrics import IoCounters

logger = logging.getLogger(__name__)

#: The probe task's period, seconds.
INTERVAL = 0.1
#: A loop late by more than this has stalled: a WARNING names where.
STALL_WARNING = 0.2
#: The watchdog thread's period, seconds.
WATCH_EVERY = 0.05
#: At most one stall WARNING per this many seconds (the others are counted into the next).
WARNING_EVERY = 10.0
#: A stall this long is reported while it lasts, by the watchdog thread.
STUCK_REPORT = 5.0
#: Innermost frames of the blocked stack shown in the WARNING.
STACK_DEPTH = 6


def describe_stack(frame: FrameType | None, depth: int = STACK_DEPTH) -> str:
    """The innermost `depth` frames, innermost first: ``file.py:123 in func <- ...``."""
    if frame is None:
        return "stack not sampled"
    entries = traceback.extract_stack(frame)[-depth:]
    return " <- ".join(f"{_short(e.filename)}:{e.lineno} in {e.name}" for e in reversed(entries))


def _short(path: str) -> str:
    """A path from the package root (chunkfs/mds/server.py) or the file name, for short log lines."""
    marker = "/chunkfs/"
    at = path.rfind(marker)
    return path[at + 1:] if at >= 0 else path.rsplit("/", 1)[-1]


class LoopLagMonitor:
    """Measures the running loop's lag and names what blocks it; `start` on the loop, `stop` at exit."""

    def __init__(self, name: str, *, interval: float = INTERVAL, threshold: float = STALL_WARNING,
                 watch_every: float = WATCH_EVERY, stuck_report: float = STUCK_REPORT) -> None:
        self.name = name
        self.interval = interval
        self.threshold = threshold
        self.watch_every = watch_every
        self.stuck_report = stuck_report
        self.lag = IoCounters()  # ops: samples; lat_sum and buckets: the lag histogram
        self.last = 0.0
        self.worst = 0.0
        self.stalls = 0
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._loop_thread = 0
        #: When the probe last ran (monotonic), written by the loop, read by the watchdog.
        self._beat = time.monotonic()
        #: The loop thread's stack caught during a stall, with the beat it was late for (set by the watchdog).
        self._caught: tuple[float, str] | None = None
        self._reported_stuck = False
        self._last_warning = float("-inf")
        self._suppressed = 0
        self._suppressed_worst = 0.0

    def start(self) -> None:
        if self._task is not None:
            return
        self._loop_thread = threading.get_ident()
        self._beat = time.monotonic()
        self._stop.clear()
        self._task = asyncio.get_running_loop().create_task(self._probe(), name=f"{self.name}-loop-lag")
        self._thread = threading.Thread(target=self._watch, name=f"{self.name}-loop-watchdog", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 2.0)
            self._thread = None

    # -- on the loop -------------------------------------------------------------------

    async def _probe(self) -> None:
        while True:
            due = time.monotonic() + self.interval
            self._beat = due  # the watchdog measures from when this wake-up was due
            await asyncio.sleep(self.interval)
            now = time.monotonic()
            self._beat = now
            self.note(max(0.0, now - due), now, due)

    def note(self, lag: float, now: float | None = None, due: float | None = None) -> None:
        """Record one measured lag; warn (rate-limited) when it is a stall.

        `due`: when the late wake-up was due; a stack the watchdog caught while
        waiting for that very wake-up names the blocking call.
        """
        now = time.monotonic() if now is None else now
        self.last = lag
        self.worst = max(self.worst, lag)
        self.lag.record(0, lag)
        caught_for, self._caught, self._reported_stuck = self._caught, None, False
        caught = caught_for[1] if caught_for is not None and (due is None or caught_for[0] == due) else None
        if lag < self.threshold:
            return
        self.stalls += 1
        if now - self._last_warning < WARNING_EVERY:
            self._suppressed += 1
            self._suppressed_worst = max(self._suppressed_worst, lag)
            return
        more = ""
        if self._suppressed:
            more = f" ({self._suppressed} more stall(s) since the last warning, worst {self._suppressed_worst:.2f}s)"
        self._last_warning, self._suppressed, self._suppressed_worst = now, 0, 0.0
        logger.warning("%s event loop stalled %.2fs (over %.0f ms: requests and heartbeats waited); blocked in: "
                       "%s%s", self.name, lag, self.threshold * 1000, caught or "stack not sampled", more)

    # -- on the watchdog thread -----------------------------------------------------------

    def _watch(self) -> None:
        while not self._stop.wait(self.watch_every):
            beat = self._beat
            late = time.monotonic() - beat
            if late < self.threshold:
                continue
            caught = self._caught
            if caught is None or caught[0] != beat:
                caught = self._caught = (beat, describe_stack(sys._current_frames().get(self._loop_thread)))
            if late >= self.stuck_report and not self._reported_stuck:
                self._reported_stuck = True
                logger.warning("%s event loop blocked for %.1fs so far, in: %s", self.name, late, caught[1])

    # -- exposition -----------------------------------------------------------------------

    def families(self) -> list[Metric]:
        hist = HistogramMetricFamily(
            "chunkfs_event_loop_lag", f"How late the event loop ran a {self.interval:g}s timer", unit="seconds")
        hist.add_metric([], self.lag.histogram_buckets(), self.lag.lat_sum)
        worst = GaugeMetricFamily("chunkfs_event_loop_lag_max_seconds", "Worst event-loop lag since start")
        worst.add_metric([], self.worst)
        stalls = CounterMetricFamily(
            "chunkfs_event_loop_stalls", f"Event-loop stalls over {self.threshold * 1000:.0f} ms")
        stalls.add_metric([], self.stalls)
        return [hist, worst, stalls]
