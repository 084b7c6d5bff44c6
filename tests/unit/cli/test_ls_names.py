"""`chunkfs ls` shows each name on one line: a name with a control character is quoted as bash reads it back
(an operator probe: a name holding a newline was printed as two lines)."""

from __future__ import annotations

import subprocess

import pytest

from chunkfs.cli.files import shown_name


@pytest.mark.parametrize("name", ["plain", "with space", "it's", "a\nb", "tab\there", "esc\x1b[31m", "back\\slash'\n",
                                  "del\x7f", "é\x01"])
def test_a_name_is_shown_on_one_line_and_bash_reads_it_back(name: str) -> None:
    shown = shown_name(name)
    assert "\n" not in shown and not any(ord(c) < 32 for c in shown)
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        back = subprocess.run(["bash", "-c", f"printf %s {shown}"], capture_output=True, check=True).stdout
        assert back.decode() == name
    else:
        assert shown == name  # (names without control characters as they are, as before)
