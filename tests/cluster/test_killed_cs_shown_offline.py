"""`kill -9` of a chunk server shows in every operator view: stat, top, get-event (also --follow), list-services."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time

from ._ops_helpers import cli_json, stat, wait_for
from .conftest import run_cli


def _lines(proc: subprocess.Popen[str]) -> tuple[queue.Queue[str], threading.Thread]:
    out: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.put(line)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return out, thread


def test_killed_chunk_server_shows_offline_everywhere(make_cluster) -> None:
    cluster = make_cluster(n_cs=3, n_mds=3)
    # A lost server is "inactive" at once and "offline" after cs-offline-timeout (default 300 s).
    assert run_cli("-c", "test", "set-config", "cs-inactive-timeout=1", "cs-offline-timeout=2").returncode == 0
    before = stat()
    victim = next(r for r in cluster.status() if r["role"] == "cs" and r["addr"] == cluster.find("cs", 3).addr)
    victim_id = victim["id"]
    follow = subprocess.Popen(
        [sys.executable, "-m", "chunkfs", "-c", "test", "get-event", "--follow", "--json",
         "--since", str(before["events_seq"])],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    lines, pump = _lines(follow)
    try:
        cluster.kill("cs", 3)
        s = wait_for("the killed CS to show offline",
                     lambda: (lambda s: s if {c["id"]: c["status"] for c in s["cs"]}[victim_id] == "offline"
                              else None)(stat()))
        assert s["status"] == "degraded"
        assert sorted(c["status"] for c in s["cs"]) == ["active", "active", "offline"]
        assert [m["role"] for m in s["mds"]].count("master") == 1
        assert ("cs", victim_id) not in {(m["role"], m["id"]) for m in s["metrics"]}

        # The event, in words, in the log (committed just after the state changes) and on the follower's stream.
        def offline_event() -> bool:
            events = cli_json("-c", "test", "get-event", "--json", "--since", str(before["events_seq"]))
            return any(e["message"].startswith(f"CS#{victim_id} offline") and e["level"] == "warning"
                       for e in events)

        wait_for("the offline event in the event log", offline_event)
        deadline = time.monotonic() + 20
        followed = []
        while time.monotonic() < deadline and not any(f"CS#{victim_id} offline" in e["message"] for e in followed):
            try:
                followed.append(json.loads(lines.get(timeout=1)))
            except queue.Empty:
                pass
        assert any(e["message"].startswith(f"CS#{victim_id} offline") for e in followed), followed
    finally:
        follow.terminate()
        follow.wait(10)
        pump.join(10)
        follow.stdout.close()

    # top: the cluster is degraded, the victim's row says offline, the MDS table has one master, two followers.
    top = run_cli("-c", "test", "top", "--once")
    assert top.returncode == 0, top.stderr
    assert "status DEGRADED" in top.stdout
    rows = [line.split() for line in top.stdout.splitlines()]
    assert [str(victim_id), "offline"] in [r[:2] for r in rows]
    roles = sorted(r[1] for r in rows if len(r) == 8 and r[1] in ("master", "follower"))
    assert roles == ["follower", "follower", "master"]
    assert "CS 2/3 active" in top.stdout
    assert f"CS#{victim_id} offline" in top.stdout  # latest events

    # list-services: read from the machine, not the cluster.
    services = cli_json("list-services", "--dir", str(cluster.dir), "--json")
    states = {(r["role"], r["dir"]): r["state"] for r in services}
    assert states[("cs", victim["dir"])] == "dead"  # kill -9 left its PID file behind
    assert sorted(states.values()).count("running") == 5
