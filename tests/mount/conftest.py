"""Fixtures for tests that mount ChunkFS for real (FUSE) and drive it with ordinary tools.

Every mount is made with the real ``chunkfs mount --background`` command and
undone in a finalizer: ``chunkfs umount``, then a lazy ``fusermount3 -u -z``
and SIGKILL of that mount's own PID if the polite way did not work.  Mounts
are undone before the cluster they use is stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chunkfs.testing.cluster import LocalCluster, cluster_factory

MiB = 1 << 20

_missing = [what for what, ok in (
    ("/dev/fuse", os.path.exists("/dev/fuse")),
    ("fusermount3", shutil.which("fusermount3") is not None),
) if not ok]
try:
    import pyfuse3  # noqa: F401
except ImportError:
    _missing.append("pyfuse3")
if _missing:
    pytest.skip(f"FUSE mount tests need {', '.join(_missing)} (install fuse3; in a container, "
                "pass --device /dev/fuse --cap-add SYS_ADMIN)", allow_module_level=True)



_STEP = re.compile(r'^chunkfs_cs_step_seconds_count\{step="([^"]+)"\} (\S+)$')


def cs_steps(base: Path) -> dict[str, int]:
    """Steps counted by every chunk server of the cluster under `base`, summed (from /metrics)."""
    out: dict[str, int] = {}
    for path in base.rglob("node.json"):
        node = json.loads(path.read_text())
        if node.get("role") != "cs" or not node.get("metrics_addr"):
            continue
        text = urllib.request.urlopen(f"http://{node['metrics_addr']}/metrics", timeout=10).read().decode()  # noqa: S310
        for line in text.splitlines():
            if m := _STEP.match(line):
                out[m.group(1)] = out.get(m.group(1), 0) + int(float(m.group(2)))
    return out


def master_metric(base: Path, name: str) -> float:
    """A plain (unlabelled) metric of the master of the cluster under `base` (from /metrics)."""
    for path in base.rglob("node.json"):
        node = json.loads(path.read_text())
        if node.get("role") != "mds" or not node.get("metrics_addr"):
            continue
        text = urllib.request.urlopen(f"http://{node['metrics_addr']}/metrics", timeout=10).read().decode()  # noqa: S310
        values = dict(line.split(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
        if float(values.get("chunkfs_raft_is_leader", 0)) == 1:
            return float(values[name])
    raise AssertionError(f"no master among the metadata servers under {base}")


def chunkfs(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the real `chunkfs` command in a child process."""
    return subprocess.run([sys.executable, "-m", "chunkfs", *args], capture_output=True, text=True,
                          timeout=timeout, env=os.environ.copy(), check=False)


def run(*argv: str | Path, timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a tool; fail the test with its output unless it exits 0."""
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, check=False)
    assert done.returncode == 0, f"{argv[0]} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done


def is_mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split(" ")[4] == target for line in f)


@pytest.fixture
def conf_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "conf"
    monkeypatch.setenv("CHUNKFS_CONF_DIR", str(path))
    monkeypatch.setenv("CHUNKFS_RUN_DIR", str(tmp_path / "run"))
    return path


@pytest.fixture
def make_cluster(tmp_path: Path, conf_dir: Path) -> Iterator[Callable[..., LocalCluster]]:
    """Make and start a local cluster (4 MiB chunks by default); its processes are stopped afterwards."""
    with cluster_factory(tmp_path, 4 * MiB) as make:
        yield make


@pytest.fixture
def mount(tmp_path: Path, make_cluster: Callable[..., LocalCluster]) -> Iterator[Callable[..., Path]]:
    """`mount(cluster, name="mnt", *options)` mounts the cluster and returns the mount point."""
    from chunkfs.client.fuse_session import state_dir
    from chunkfs.common.daemon import read_pid

    mounted: list[Path] = []

    def do_mount(cluster: LocalCluster, name: str = "mnt", *options: str) -> Path:
        path = tmp_path / name
        path.mkdir()
        argv = ["-c", cluster.name, "mount", str(path)]
        for opt in options:
            argv += ["-o", opt]
        mounted.append(path)
        done = chunkfs(*argv, "--background", timeout=60)
        assert done.returncode == 0, f"mount failed: {done.stderr}"
        assert is_mounted(path)
        return path

    yield do_mount
    for path in reversed(mounted):
        pid = read_pid(state_dir(path))
        with contextlib.suppress(subprocess.TimeoutExpired):
            chunkfs("umount", str(path), timeout=30)
        if is_mounted(path):
            subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True, timeout=30, check=False)
        if pid is not None:
            deadline = time.monotonic() + 10
            while read_pid(state_dir(path)) == pid and time.monotonic() < deadline:
                time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError):
                if read_pid(state_dir(path)) == pid:
                    os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def local_up_mounted(tmp_path: Path, name: str, *more: str) -> Iterator[tuple[Path, Path]]:
    """`chunkfs local up` (1 MDS, 2 CS, 1 MiB chunks) mounted on tmp_path/mnt: (cluster folder, mount point).

    Whatever the test did meanwhile, the mount is detached, its process killed
    and every daemon of the cluster stopped afterwards, by PID.
    """
    from chunkfs.client.fuse_session import state_dir
    from chunkfs.common.daemon import is_chunkfs_process, read_pid

    d, mnt = tmp_path / "local", tmp_path / "mnt"
    try:
        done = chunkfs("local", "up", "--dir", str(d), "--name", name, "--mds", "1", "--cs", "2",
                       "--chunk-size", "1M", "--mount", str(mnt), *more, timeout=120)
        assert done.returncode == 0, done.stderr
        yield d, mnt
    finally:
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, timeout=30, check=False)
        pid = read_pid(state_dir(mnt))
        if pid is not None and is_chunkfs_process(pid, mnt):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            LocalCluster.load(d).stop_all()


def logs_of(d: Path, mnt: Path, lines: int = 30) -> str:
    """The last `lines` of every daemon log of the `local up` cluster in `d` and of the mount on `mnt`:
    for a failure's message, since a CI run keeps nothing else of a test's cluster."""
    from chunkfs.client.fuse_session import state_dir

    out = []
    for log in [*sorted(d.glob("*/daemon.log")), state_dir(mnt) / "daemon.log"]:
        with contextlib.suppress(OSError):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log.parent.name}/{log.name}\n" + "\n".join(tail))
    return "\n".join(out)


def random_file(path: Path, size: int) -> Path:
    """A file of random bytes, written in 4 MiB pieces (bounded memory)."""
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 4 * MiB)
            f.write(os.urandom(n))
            left -= n
    return path


def write_and_close(path: Path, data: bytes, offset: int) -> None:
    """Open for writing, write `data` at `offset` whole, close: what one mount hands another (close-to-open)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        assert os.pwrite(fd, data, offset) == len(data)
    finally:
        os.close(fd)
