"""How long a metadata server's death stops a program's metadata changes, seen through the mount.

    .venv/bin/python bench/probe_failover.py [--runs 3] [--kill master|follower]

Each run starts the cluster the quick start starts (``chunkfs local up``: 3
MDS, 3 CS, a mount), creates empty files one after another in the mount,
kills a metadata server with SIGKILL after 4 s, goes on creating for 10 s
more, and prints the time from the kill to the first create that succeeded
after it and the longest wait between two creates (every create must
succeed).  `--kill master` (the default): the figure includes the election
(1-2 s of silence before a follower campaigns) and the mount's retries,
which are about a second apart.  `--kill follower`: the follower the
master's commits were counting on then (the one furthest along; the other
is sent changes in batches, see raft/core.py's LAZY_BATCH).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from bench_client import chunkfs_cli  # noqa: E402

CLUSTER = "failover"
KILL_AT = 4.0
RUN_FOR = 14.0


def mds_pid(base: Path, which: str) -> int:
    """The PID of the master, or of the follower furthest along, now."""
    stat = subprocess.run([sys.executable, "-m", "chunkfs", "-c", CLUSTER, "stat", "--json"],
                          capture_output=True, text=True, check=True, timeout=60)
    members = json.loads(stat.stdout)["mds"]
    if which == "master":
        chosen = next(m["id"] for m in members if m["role"] == "master")
    else:
        chosen = max((m for m in members if m["role"] == "follower"), key=lambda m: m["commit"])["id"]
    status = subprocess.run([sys.executable, "-m", "chunkfs", "local", "status", "--dir", str(base), "--json"],
                            capture_output=True, text=True, check=True, timeout=60)
    return next(p["pid"] for p in json.loads(status.stdout)["processes"] if p["role"] == "mds" and p["id"] == chosen)


def one_run(tmp: Path, which: str) -> tuple[float, float, int]:
    """Seconds from the kill to the next create, the longest wait between two creates; creates in all."""
    base, mnt = tmp / "cluster", tmp / "mnt"
    chunkfs_cli("local", "up", "--dir", str(base), "--name", CLUSTER, "--mount", str(mnt), timeout=180)
    try:
        time.sleep(2)  # the followers' first heartbeats
        chosen: list[int] = []  # a follower is chosen under load, beside the creates (it takes a while)
        chooser = threading.Timer(KILL_AT - 1 if which == "follower" else 0,
                                  lambda: chosen.append(mds_pid(base, which)))
        chooser.start()
        started, killed, done = time.monotonic(), 0.0, []
        while time.monotonic() - started < RUN_FOR:
            if not killed and time.monotonic() - started > KILL_AT:
                chooser.join()
                os.kill(chosen[0], signal.SIGKILL)
                killed = time.monotonic()
            os.close(os.open(mnt / f"f{len(done)}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            done.append(time.monotonic())
        longest = max(b - a for a, b in zip(done, done[1:], strict=False))
        return next(t for t in done if t > killed) - killed, longest, len(done)
    finally:
        chunkfs_cli("local", "down", "--dir", str(base), timeout=180, check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--kill", choices=("master", "follower"), default="master")
    args = parser.parse_args()
    for run in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory(prefix="chunkfs-failover-") as tmp:
            os.environ["CHUNKFS_CONF_DIR"] = f"{tmp}/conf"
            gap, longest, creates = one_run(Path(tmp), args.kill)
        print(f"run {run}: first create {gap:.3f} s after the {args.kill}'s kill, longest wait between two "
              f"creates {longest:.3f} s ({creates} creates)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
