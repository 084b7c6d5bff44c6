"""Test knobs: environment variables that make a size smaller, so tests reach its edge cheaply.

A knob only ever lowers a value (bounded to 1..default): a stray variable in
an operator's environment can make a daemon do more, smaller steps, never
break a limit the protocol relies on.
"""

from __future__ import annotations

import os


def lowered(name: str, default: int) -> int:
    """`default`, or the smaller positive integer in the environment variable `name`."""
    text = os.environ.get(name, "")
    return max(1, min(default, int(text))) if text.isdigit() else default
