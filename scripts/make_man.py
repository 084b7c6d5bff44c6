#!/usr/bin/env python3
"""Write the manual page docs/chunkfs.1 from the command's own parser (every command, option and help text).

    .venv/bin/python scripts/make_man.py           # (re)write docs/chunkfs.1
    .venv/bin/python scripts/make_man.py --check   # exit 1 if docs/chunkfs.1 is not what the parser makes now

argparse-manpage (a test dependency) renders the parser; the sections it cannot know (exit status,
environment, files, examples) come from docs/chunkfs.1.include.  `scripts/install.sh` installs the page
so that `man chunkfs` shows it; the test suite runs --check, so a changed option or help text that was
not written into the page fails it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import chunkfs

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "chunkfs.1"
INCLUDE = ROOT / "docs" / "chunkfs.1.include"


def render() -> str:
    """The page as the parser makes it now (dated today: its first line, the title, is not compared)."""
    run_cli = "import sys; from argparse_manpage.cli import main; sys.exit(main())"
    argv = [sys.executable, "-c", run_cli, "--module", "chunkfs.cli.main", "--function", "build_parser",
            "--project-name", "ChunkFS", "--prog", "chunkfs", "--description", "a distributed storage cluster",
            "--manual-title", "ChunkFS Manual", "--version", chunkfs.__version__, "--include", str(INCLUDE)]
    # Usage lines are wrapped to the terminal's width: the same wherever the page is made.
    env = {**os.environ, "COLUMNS": "100"}
    return subprocess.run(argv, capture_output=True, text=True, check=True, env=env, timeout=120).stdout


def main() -> int:
    page = render()
    if "--check" in sys.argv[1:]:
        if not PAGE.exists() or PAGE.read_text().split("\n", 1)[1:] != page.split("\n", 1)[1:]:
            print(f"{PAGE} is not what the command's parser makes now: run scripts/make_man.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(page)
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
