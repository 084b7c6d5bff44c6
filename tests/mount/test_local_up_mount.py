"""`chunkfs local up --mount`: the local cluster comes up mounted, and `local down` unmounts it first."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from .conftest import chunkfs, is_mounted, local_up_mounted


def test_local_up_mounts_and_down_unmounts(tmp_path: Path, conf_dir: Path) -> None:
    with local_up_mounted(tmp_path, "lm", "-o", "attr_timeout=0.5") as (d, mnt):
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
        # Over the cluster's folder, one of its servers' or a folder holding it: the servers' files hidden
        # from them (a probe: "local.json: Input/output error", a metadata server hung on the mount).
        for over in (d, d / "mds1", d.parent):
            done = chunkfs("local", "up", "--dir", str(d), "--mount", str(over), timeout=120)
            assert done.returncode != 0 and "would hide" in done.stderr and len(done.stderr.splitlines()) == 1, done
            assert not is_mounted(over)
        done = chunkfs("local", "down", "--dir", str(d), timeout=120)
        assert done.returncode == 0, done.stderr
        assert f"unmounted {mnt}" in done.stdout
        assert not is_mounted(mnt)
        assert json.loads((d / "local.json").read_text())["mounts"] == []


def test_local_down_with_a_file_still_open_stops_everything(tmp_path: Path, conf_dir: Path) -> None:
    """A program holding a file open on the mount must not keep the cluster's servers running."""
    from chunkfs.client.fuse_session import state_dir
    from chunkfs.common.daemon import pid_alive, read_pid

    with local_up_mounted(tmp_path, "lo") as (d, mnt):
        mount_pid = read_pid(state_dir(mnt))
        assert mount_pid is not None
        held = os.open(mnt / "held", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(held, b"still open")
        try:
            done = chunkfs("local", "down", "--dir", str(d), timeout=120)
        finally:
            with contextlib.suppress(OSError):  # ENOTCONN: the mount is gone, as intended
                os.close(held)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "unmounting lazily" in done.stdout and "stopping its mount process" in done.stdout
        assert not is_mounted(mnt)
        assert not pid_alive(mount_pid)
        status = json.loads(chunkfs("local", "status", "--dir", str(d), "--json").stdout)
        assert not any(p["running"] for p in status["processes"]), status
