"""The always-on step timings: counts, totals and the worst of each named step."""

from __future__ import annotations

import json

from chunkfs.common.timings import Timings


def test_counts_totals_and_worst() -> None:
    t = Timings()
    t.record("fuse.create", 0.002)
    t.record("fuse.create", 0.004)
    t.record("mds.CREATE", 0.001)
    snap = t.snapshot()
    assert snap["fuse.create"]["count"] == 2
    assert abs(snap["fuse.create"]["total_s"] - 0.006) < 1e-12
    assert snap["fuse.create"]["max_s"] == 0.004
    assert snap["mds.CREATE"] == {"count": 1, "total_s": 0.001, "max_s": 0.001}
    assert json.loads(json.dumps(snap)) == snap  # what a mount writes on SIGUSR1
    t.clear()
    assert t.snapshot() == {}


def test_since_measures_from_a_perf_counter_start() -> None:
    import time

    t = Timings()
    started = time.perf_counter() - 0.5
    t.since("step", started)
    assert t.snapshot()["step"]["total_s"] >= 0.5
