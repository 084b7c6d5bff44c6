"""A daemon's PID file is believed only when /proc shows a `chunkfs` command naming that directory."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from chunkfs.common.daemon import PID_FILE, daemon_pid, is_chunkfs_process

SLEEP = "import time; time.sleep(60)"


@contextmanager
def process(argv: list[str], cwd: Path, program: str = sys.executable) -> Iterator[int]:
    """A process of this test's own with the given argv (argv[0] included), stopped afterwards by its PID."""
    child = subprocess.Popen(argv, executable=program, cwd=cwd, stdin=subprocess.DEVNULL)
    try:
        # Just after exec the kernel may show an empty command line for a moment (a daemon's PID
        # file is written only once it serves, long after).
        deadline = time.monotonic() + 10
        while not Path(f"/proc/{child.pid}/cmdline").read_bytes() and time.monotonic() < deadline:
            time.sleep(0.01)
        yield child.pid
    finally:
        child.kill()
        child.wait(30)


@pytest.mark.parametrize("args", [
    ["mds", "-r", "node"],  # relative: taken from the process's working directory
    ["cs", "--dir=node"],
    ["cs", "-r", "{tmp}/node/"],
    ["mds", "-r", "./x/../node"],
])
def test_chunkfs_command_naming_the_directory(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "node").mkdir()
    (tmp_path / "x").mkdir()
    argv = ["chunkfs", "-c", SLEEP, *(a.format(tmp=tmp_path) for a in args)]
    with process(argv, tmp_path) as pid:
        assert is_chunkfs_process(pid, tmp_path / "node")
        assert not is_chunkfs_process(pid, tmp_path / "other")
        (tmp_path / "node" / PID_FILE).write_text(f"{pid}\n")
        assert daemon_pid(tmp_path / "node") == pid


def test_python_m_chunkfs_is_recognised(tmp_path: Path) -> None:
    # `python -m chunkfs mds -r DIR`, as start_background runs daemons; here -m runs a stand-in module.
    (tmp_path / "chunkfs").mkdir()
    (tmp_path / "chunkfs" / "__main__.py").write_text(SLEEP)
    with process([sys.executable, "-m", "chunkfs", "mds", "-r", str(tmp_path / "node")], tmp_path) as pid:
        assert is_chunkfs_process(pid, tmp_path / "node")


@pytest.mark.parametrize("argv", [
    ["python3", "-c", SLEEP, "{node}"],  # names the directory, but is not chunkfs
    ["vim", "-c", SLEEP, "{node}"],
    ["python3", "-c", SLEEP, "chunkfs", "{node}"],
])
def test_other_programs_are_never_ours(tmp_path: Path, argv: list[str]) -> None:
    node = tmp_path / "node"
    node.mkdir()
    with process([a.format(node=node) for a in argv], tmp_path) as pid:
        assert not is_chunkfs_process(pid, node)
        (node / PID_FILE).write_text(f"{pid}\n")
        assert daemon_pid(node) is None


@pytest.mark.parametrize("content", ["0\n", "-1\n", "", "abc", "999999999\n"])
def test_pid_files_that_name_no_process(tmp_path: Path, content: str) -> None:
    (tmp_path / PID_FILE).write_text(content)
    assert daemon_pid(tmp_path) is None
