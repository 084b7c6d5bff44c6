"""`chunkfs local up --mount`: the local cluster comes up mounted, and `local down` unmounts it first."""

from __future__ import annotations

import contextlib
import json
import subprocess
from pathlib import Path

from chunkfs.testing.cluster import LocalCluster

from .conftest import chunkfs, is_mounted


def test_local_up_mounts_and_down_unmounts(tmp_path: Path, conf_dir: Path) -> None:
    d, mnt = tmp_path / "local", tmp_path / "mnt"
    try:
        done = chunkfs("local", "up", "--dir", str(d), "--name", "lm", "--mds", "1", "--cs", "2",
                       "--chunk-size", "1M", "--mount", str(mnt), "-o", "attr_timeout=0.5", timeout=120)
        assert done.returncode == 0, done.stderr
        assert is_mounted(mnt)
        (mnt / "hello").write_bytes(b"from the local mount\n")
        done = chunkfs("-c", "lm", "get", "/hello", str(tmp_path / "copy"))
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "copy").read_bytes() == b"from the local mount\n"
        status = json.loads(chunkfs("local", "status", "--dir", str(d), "--json").stdout)
        assert status["mounts"] == [str(mnt)]
        # Up again: already mounted, nothing doubled.
        done = chunkfs("local", "up", "--dir", str(d), "--mount", str(mnt), timeout=120)
        assert done.returncode == 0 and "already mounted" in done.stdout, done.stdout + done.stderr
        done = chunkfs("local", "down", "--dir", str(d), timeout=120)
        assert done.returncode == 0, done.stderr
        assert f"unmounted {mnt}" in done.stdout
        assert not is_mounted(mnt)
        assert json.loads((d / "local.json").read_text())["mounts"] == []
    finally:
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, timeout=30, check=False)
        with contextlib.suppress(Exception):
            LocalCluster.load(d).stop_all()
