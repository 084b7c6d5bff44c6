"""A background daemon's log rotates by size as node.json says, and its stderr follows to the new file."""

from __future__ import annotations

import json
import os
import signal
import socket

from chunkfs.common.config import load_client_config
from chunkfs.common.daemon import LOG_FILE, daemon_pid, free_port, wait_exit
from hostile_frames import handshake

from .conftest import run_cli

#: Bounds the flood: each connection closed for a bad frame logs one line of about 140 bytes.  After the
#: handshake: before it, such lines come once per interval with a count (a flood must not fill the log).
MAX_CONNECTIONS = 2000


def _bad_connection(addr: str, secret: bytes) -> None:
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        handshake(sock, "rot", secret)
        sock.sendall(b"not the ChunkFS protocol\n" * 8)
        try:
            while sock.recv(4096):
                pass
        except OSError:
            pass


def test_background_daemon_log_rotates_by_size(conf_dir, tmp_path) -> None:
    node_dir = tmp_path / "mds"
    addr = f"127.0.0.1:{free_port()}"
    made = run_cli("-c", "rot", "make-mds", "-I", "-a", addr, "-r", str(node_dir))
    assert made.returncode == 0, made.stderr
    path = node_dir / "node.json"
    data = json.loads(path.read_text())
    data.update(log_max_size="4K", log_backups=2)
    path.write_text(json.dumps(data))
    started = run_cli("mds", "-r", str(node_dir), "--background")
    assert started.returncode == 0, started.stderr
    pid = daemon_pid(node_dir)
    assert pid is not None
    try:
        log = node_dir / LOG_FILE
        for _ in range(MAX_CONNECTIONS):
            if (node_dir / f"{LOG_FILE}.2").exists() and log.stat().st_size > 1024:
                break
            _bad_connection(addr, load_client_config("rot").secret)
        names = sorted(p.name for p in node_dir.iterdir() if p.name.startswith(LOG_FILE))
        assert names == [LOG_FILE, f"{LOG_FILE}.1", f"{LOG_FILE}.2"], names
        for name in names:
            assert (node_dir / name).stat().st_size <= 4096, name
        assert "bad frame magic" in (node_dir / f"{LOG_FILE}.1").read_text()
        # What the daemon writes outside logging (a crash's traceback) goes to the current file.
        for fd in (1, 2):
            assert os.path.samestat(os.stat(f"/proc/{pid}/fd/{fd}"), log.stat()), fd
        assert daemon_pid(node_dir) == pid  # still serving
    finally:
        os.kill(pid, signal.SIGTERM)
        if not wait_exit(pid, 30):
            os.kill(pid, signal.SIGKILL)
            wait_exit(pid, 10)
