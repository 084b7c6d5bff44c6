"""Looking at a daemon from outside, for tests and benchmarks: its memory, and a connection's state."""

from __future__ import annotations

import socket
from pathlib import Path


def rss(pid: int) -> int:
    """Resident memory of process `pid`, bytes (0 if it has none left)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def still_open(sock: socket.socket) -> bool:
    """Whether the peer has not closed this connection (reading past any error frame it sent first)."""
    sock.setblocking(False)
    try:
        for _ in range(100):
            if sock.recv(65536) == b"":
                return False
    except BlockingIOError:
        return True
    except OSError:
        return False
    return True
