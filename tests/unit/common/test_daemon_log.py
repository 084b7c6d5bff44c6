"""A background daemon's log rotates by size, and a crash's traceback still lands in the current log."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from chunkfs.common.daemon import LOG_FILE, rotate_log

#: A daemon as `start_background` runs it: stdout and stderr appended to the log file.
DAEMON = """
import logging, sys
from pathlib import Path
from chunkfs.common.daemon import rotate_log, setup_logging

setup_logging()
assert rotate_log(Path(sys.argv[1]), 4096, 2)
log = logging.getLogger("chunkfs.test")
for i in range(300):
    log.warning("line %04d of a daemon that logs a lot", i)
print("written to stdout after the rotations", flush=True)
raise RuntimeError("boom: an uncaught exception")
"""


def test_log_rotates_by_size_and_crash_output_lands_in_the_current_log(tmp_path: Path) -> None:
    log_path = tmp_path / LOG_FILE
    with open(log_path, "ab") as log:
        done = subprocess.run([sys.executable, "-c", DAEMON, str(log_path)], stdin=subprocess.DEVNULL,
                              stdout=log, stderr=log, timeout=60, check=False)
    assert done.returncode == 1
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [LOG_FILE, f"{LOG_FILE}.1", f"{LOG_FILE}.2"]
    for name in files[1:]:
        text = (tmp_path / name).read_text()
        assert 0 < len(text.encode()) <= 4096 and "of a daemon that logs a lot" in text
    current = log_path.read_text()
    assert "line 0299" in current
    assert "written to stdout after the rotations" in current
    assert "RuntimeError: boom: an uncaught exception" in current.splitlines()[-1]
    assert "Traceback" not in (tmp_path / f"{LOG_FILE}.1").read_text()


def test_a_daemon_in_the_foreground_keeps_logging_to_stderr(tmp_path: Path) -> None:
    (tmp_path / LOG_FILE).write_text("")
    # stderr here is the test runner's, not the log: nothing changes.
    assert not rotate_log(tmp_path / LOG_FILE, 4096, 2)
    assert not rotate_log(tmp_path / "missing.log", 4096, 2)
