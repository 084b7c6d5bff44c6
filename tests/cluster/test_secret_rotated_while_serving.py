"""The cluster secret is rotated with `chunkfs secret` while a client writes and reads without a pause.

Afterwards a client holding the old secret is refused with one clear line, one
with the new secret is served, and a chunk server killed and started again
(new connections to the master and from clients, with the secret in its own
directory) takes writes again.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

from chunkfs.common.config import SECRET_FILE, read_secret
from chunkfs.common.secret_files import NEXT_SECRET_FILE
from chunkfs.testing.cluster import wait_for

from .conftest import run_cli

MiB = 1 << 20
#: The writer's pace: one write and one read-back every this many seconds.
PACE = 0.02


class Writer(threading.Thread):
    """Writes and reads back a block after block until stopped; records every failure and each op's time."""

    def __init__(self, cluster) -> None:
        super().__init__(daemon=True)
        self.client = cluster.client()
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.ops = 0
        self.slowest = 0.0

    def run(self) -> None:
        c = self.client
        f = c.open("/live", create=True)
        block = 0
        while not self.stop.is_set() and len(self.errors) < 5:
            data = os.urandom(64 << 10)
            start = time.monotonic()
            try:
                c.run(f.write(block * len(data), data))
                if c.run(f.read(block * len(data), len(data))) != data:
                    self.errors.append(f"block {block} read back different")
                self.ops += 1
            except Exception as exc:  # noqa: BLE001 - recorded for the assertion
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self.slowest = max(self.slowest, time.monotonic() - start)
            block = (block + 1) % 64  # 4 MiB: four chunks, rewritten in turn
            time.sleep(PACE)


def test_secret_rotated_while_a_client_is_served(make_cluster, conf_dir: Path, tmp_path: Path) -> None:
    cluster = make_cluster(n_mds=3, n_cs=3)
    name = cluster.name
    conf = conf_dir / "clusters" / name
    old_conf = tmp_path / "old-conf"
    shutil.copytree(conf_dir, old_conf)
    old = read_secret(conf / SECRET_FILE)
    with cluster.client() as c:
        c.set_replicas("/", 3, 2)

    writer = Writer(cluster)
    writer.start()
    try:
        wait_for("the writer's first operations", lambda: writer.ops >= 5, timeout=30)
        stage = run_cli("-c", name, "secret", "stage", "--local", str(cluster.dir))
        assert stage.returncode == 0, stage.stderr
        assert all((Path(p.dir) / NEXT_SECRET_FILE).exists() for p in cluster.processes)
        check = run_cli("-c", name, "secret", "check")
        assert check.returncode == 0, check.stdout + check.stderr
        ops_mid = writer.ops
        finish = run_cli("-c", name, "secret", "finish", "--local", str(cluster.dir))
        assert finish.returncode == 0, finish.stderr
        new = read_secret(conf / SECRET_FILE)
        assert new != old
        assert all(read_secret(Path(p.dir) / SECRET_FILE) == new for p in cluster.processes)
        assert not any((Path(p.dir) / NEXT_SECRET_FILE).exists() for p in cluster.processes)
        time.sleep(2)  # every daemon has looked at its files again
        wait_for("operations after the rotation", lambda: writer.ops >= ops_mid + 20, timeout=30)
    finally:
        writer.stop.set()
        writer.join(timeout=30)
        writer.client.close()
    assert not writer.errors, writer.errors
    assert writer.slowest < 10, f"an operation took {writer.slowest:.1f} s during the rotation"

    # The old secret: refused, one line that says what to check.
    refused = run_cli("-c", name, "stat", env_extra={"CHUNKFS_CONF_DIR": str(old_conf)})
    assert refused.returncode == 1
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("chunkfs: error: ") and "secret" in lines[0], refused.stderr
    # The new secret: served.
    served = run_cli("-c", name, "stat")
    assert served.returncode == 0, served.stderr
    # Finishing or aborting again, with nothing staged, is an error, not a success (a probe: both claimed one).
    for action in ("finish", "abort"):
        again = run_cli("-c", name, "secret", action, "--local", str(cluster.dir))
        assert again.returncode == 1 and "no secret is staged" in again.stderr, again
    assert read_secret(conf / SECRET_FILE) == new

    # A chunk server started again knows only the new secret (from its directory) and is let back in.
    cluster.kill("cs", 1)
    cluster.start("cs", 1)
    cluster.wait_ready()
    with cluster.client() as c:
        f = c.open("/after", create=True)
        data = os.urandom(3 * MiB)
        c.run(f.write(0, data))
        c.run(f.fsync())
        assert c.run(f.read(0, len(data))) == data
    for proc in cluster.processes:
        log = (Path(proc.dir) / "daemon.log").read_text(errors="replace")
        assert "Traceback" not in log, f"{proc.role}{proc.id}: {log[-2000:]}"
        assert old.hex() not in log and new.hex() not in log
        # The connections each daemon accepted before the rotation proved the new secret on the spot
        # (2-6 of them each, seen); none was cut.
        assert "rotated out" not in log, f"{proc.role}{proc.id}: {log[-2000:]}"
        assert "proved the cluster secret this node holds now" in log, f"{proc.role}{proc.id}: {log[-2000:]}"
