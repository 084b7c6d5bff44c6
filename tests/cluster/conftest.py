"""Fixtures for tests that start real ChunkFS processes on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chunkfs.testing.cluster import LocalCluster, cluster_factory


@pytest.fixture
def conf_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private client configuration directory for this test."""
    path = tmp_path / "conf"
    monkeypatch.setenv("CHUNKFS_CONF_DIR", str(path))
    return path


@pytest.fixture
def make_cluster(tmp_path: Path, conf_dir: Path) -> Iterator[Callable[..., LocalCluster]]:
    """Make and start a local cluster (1 MiB chunks by default); its processes are stopped afterwards."""
    with cluster_factory(tmp_path, 1 << 20) as make:
        yield make


def run_cli(*args: str, stdin: bytes | None = None, timeout: float = 60,
            env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real `chunkfs` command in a child process (`env_extra`: variables set for it alone)."""
    return subprocess.run(
        [sys.executable, "-m", "chunkfs", *args],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env_extra or {})}, check=False,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """A command's failure as the CLI promises it: a non-zero status and one line on stderr; that line."""
    assert result.returncode != 0, result
    assert result.stderr.startswith("chunkfs: error: "), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    return result.stderr
