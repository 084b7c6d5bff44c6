"""docs/chunkfs.1, the manual page, is what the command's parser makes now (scripts/make_man.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_the_manual_page_has_every_command_and_is_up_to_date() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_man.py"), "--check"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    page = (ROOT / "docs" / "chunkfs.1").read_text().replace("\\-", "-")  # (roff's hyphens)
    from chunkfs.cli.main import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name in commands:
        assert f"'chunkfs {name}'" in page, name
    for section in ("EXIT STATUS", "ENVIRONMENT", "FILES", "EXAMPLES", "SEE ALSO"):
        assert f".SH {section}" in page, section
