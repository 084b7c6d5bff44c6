"""Where one operation's time goes: count, total and worst of named steps, always on.

Every process keeps one `Timings` (`TIMINGS`): the mount records each FUSE
request, the client library each master request, the master each request it
serves and each Raft step (append and fsync, commit, apply).  Recording is a
dictionary lookup and three additions, cheap enough for every request, so the
figures exist on a production cluster when someone asks why it is slow.

Read them with ``kill -USR1`` on a mount (it writes ``timings.json`` in its
state folder) or from a metadata server's ``/metrics`` (``chunkfs_mds_step_seconds``);
``bench/bench_breakdown.py`` turns them into the per-operation table in
BENCHMARKS.md.
"""

from __future__ import annotations

import time
from typing import Any


class Timings:
    def __init__(self) -> None:
        #: name -> [count, total seconds, worst seconds]
        self._steps: dict[str, list[float]] = {}

    def record(self, name: str, seconds: float) -> None:
        step = self._steps.get(name)
        if step is None:
            self._steps[name] = [1, seconds, seconds]
            return
        step[0] += 1
        step[1] += seconds
        if seconds > step[2]:
            step[2] = seconds

    def since(self, name: str, started: float) -> None:
        """Record the time since `started` (a `time.perf_counter()` value)."""
        self.record(name, time.perf_counter() - started)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """{name: {count, total_s, max_s}}, for JSON and for subtracting one snapshot from another."""
        return {name: {"count": int(c), "total_s": t, "max_s": m} for name, (c, t, m) in sorted(self._steps.items())}

    def clear(self) -> None:
        self._steps.clear()


#: The process's timings (one process, one role).
TIMINGS = Timings()
