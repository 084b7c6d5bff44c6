"""Sizes as people read them, for the command line."""

from __future__ import annotations


def human_bytes(n: float, compact: bool = False) -> str:
    """``1.5 GiB`` (or ``1.5G`` with `compact`, for tight tables)."""
    units = ("B", "K", "M", "G", "T", "P") if compact else ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    for unit in units:
        if abs(n) < 1024 or unit == units[-1]:
            break
        n /= 1024
    if unit == "B":
        return f"{n:.0f}B" if compact else f"{n:.0f} B"
    return f"{n:.1f}{unit}" if compact else f"{n:.1f} {unit}"
