"""How long the master's death stops a program's metadata changes, seen through the mount.

    .venv/bin/python bench/probe_failover.py [--runs 3]

Each run starts the cluster the quick start starts (``chunkfs local up``: 3
MDS, 3 CS, a mount), creates empty files one after another in the mount,
kills the master with SIGKILL after 4 s, goes on creating for 10 s more, and
prints the time from the kill to the first create that succeeded after it
(every create must succeed: the mount waits for the new master).  The
figure includes the election (1-2 s of silence before a follower campaigns)
and the mount's retries, which are about a second apart.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from bench_client import chunkfs_cli  # noqa: E402

CLUSTER = "failover"
KILL_AT = 4.0
RUN_FOR = 14.0


def master_pid(base: Path) -> int:
    """The PID of the metadata server that is master now."""
    stat = subprocess.run([sys.executable, "-m", "chunkfs", "-c", CLUSTER, "stat", "--json"],
                          capture_output=True, text=True, check=True, timeout=60)
    master = next(m["id"] for m in json.loads(stat.stdout)["mds"] if m["role"] == "master")
    status = subprocess.run([sys.executable, "-m", "chunkfs", "local", "status", "--dir", str(base), "--json"],
                            capture_output=True, text=True, check=True, timeout=60)
    return next(p["pid"] for p in json.loads(status.stdout)["processes"] if p["role"] == "mds" and p["id"] == master)


def one_run(tmp: Path) -> tuple[float, int]:
    """Seconds from the kill to the next create; creates made in all."""
    base, mnt = tmp / "cluster", tmp / "mnt"
    chunkfs_cli("local", "up", "--dir", str(base), "--name", CLUSTER, "--mount", str(mnt), timeout=180)
    try:
        time.sleep(2)  # the followers' first heartbeats
        pid = master_pid(base)
        started, killed, done = time.monotonic(), 0.0, []
        while time.monotonic() - started < RUN_FOR:
            if not killed and time.monotonic() - started > KILL_AT:
                os.kill(pid, signal.SIGKILL)
                killed = time.monotonic()
            os.close(os.open(mnt / f"f{len(done)}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            done.append(time.monotonic())
        return next(t for t in done if t > killed) - killed, len(done)
    finally:
        chunkfs_cli("local", "down", "--dir", str(base), timeout=180, check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    for run in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory(prefix="chunkfs-failover-") as tmp:
            os.environ["CHUNKFS_CONF_DIR"] = f"{tmp}/conf"
            gap, creates = one_run(Path(tmp))
        print(f"run {run}: first create {gap:.2f} s after the master's kill ({creates} creates)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
