"""A small file system to fill, for the full-disk tests (needs root: skipped without)."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def mount_tmpfs(path: Path, size: int) -> None:
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small file system to fill (needs root): {done.stderr.strip()}")


def unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30, check=False)


@contextlib.contextmanager
def on_small_disk(cluster: Any, role: str, node_id: int, folder: Path, saved: Path, size: int) -> Iterator[None]:
    """Start node `role` `node_id` again with `folder` on a file system of `size` bytes holding what it
    held (a copy kept in `saved`); at the end the node is stopped and the file system unmounted."""
    cluster.kill(role, node_id, signal.SIGTERM)
    shutil.copytree(folder, saved)
    mount_tmpfs(folder, size)
    try:
        shutil.copytree(saved, folder, dirs_exist_ok=True)
        cluster.start(role, node_id)
        yield
    finally:
        cluster.kill(role, node_id, signal.SIGTERM)
        unmount(folder)
