"""Running a server process: event loop, logging, PID file, signals, background start.

A daemon runs in the foreground (systemd, tests, debugging) or is started in
the background by the same command with ``--background``: the parent starts a
detached child with its output in the node directory's log, waits until the
child listens — or exits, in which case it prints why — and returns.

A running daemon is found by the PID file in its directory, whoever started
it, and only believed when ``/proc/PID/cmdline`` is a ``chunkfs`` command that
names that directory: a PID file left behind by a crash, whose number the
kernel has since given to another program, never gets that program signalled.

A background daemon's log rotates by size (``log_max_size``, ``log_backups``
in node.json); its stdout and stderr follow the log to each new file, so a
traceback of a crash lands at the end of the current ``daemon.log``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import itertools
import logging
import logging.handlers
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from chunkfs.common.durable import write_file_durably
from chunkfs.common.errors import ConfigError, Unavailable

logger = logging.getLogger(__name__)

PID_FILE = "chunkfs.pid"
LOG_FILE = "daemon.log"
START_TIMEOUT = 20.0


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format=LOG_FORMAT,
        stream=sys.stderr,
    )


class RotatingDaemonLog(logging.handlers.RotatingFileHandler):
    """The standard size-rotating handler, with stdout and stderr moved to each new file.

    What is written outside logging — the traceback of a crash, the last
    ``chunkfs: error:`` line, a fault handler's dump — then lands at the end of
    the current log, not in a renamed (and later deleted) one.
    """

    def doRollover(self) -> None:  # noqa: N802 - the standard library's name
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        super().doRollover()
        if self.stream is None:
            self.stream = self._open()
        for fd in (1, 2):
            with contextlib.suppress(OSError):
                os.dup2(self.stream.fileno(), fd)


def rotate_log(log_path: Path, max_size: int, backups: int) -> bool:
    """Rotate `log_path` by size if this process's stderr is that file (a background daemon).

    The handler takes over from the one writing to stderr; stdout and stderr
    stay on the log (see `RotatingDaemonLog`).  A daemon in the foreground
    (systemd's journal, a terminal) keeps logging to stderr.  True if rotation
    was set up.
    """
    try:
        if not os.path.samestat(os.fstat(2), os.stat(log_path)):
            return False
    except OSError:
        return False
    handler = RotatingDaemonLog(log_path, maxBytes=max_size, backupCount=backups, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old, logging.StreamHandler) and getattr(old, "stream", None) in (sys.stderr, sys.stdout):
            root.removeHandler(old)
    root.addHandler(handler)
    return True


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when it is installed: its transports cut the per-request cost of the event loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is not running.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z"):
            return False
    return True


def read_pid(directory: Path) -> int | None:
    try:
        pid = int((directory / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid > 0 and pid_alive(pid) else None


def _chunkfs_args(argv: list[str]) -> list[str] | None:
    """The arguments of a ``chunkfs`` command line after the program (None: not a chunkfs command).

    The `chunkfs` console script, ``python /path/chunkfs ...``, or ``python -m chunkfs ...`` (how
    daemons start each other).
    """
    prog = [os.path.basename(a) for a in argv[:3]]
    if prog[0] == "chunkfs":
        return argv[1:]
    if prog[0].startswith("python"):
        if prog[1:2] == ["chunkfs"]:
            return argv[2:]
        if argv[1:3] == ["-m", "chunkfs"]:
            return argv[3:]
    return None


def running_node_dirs() -> list[Path]:
    """The node directories (``-r DIR``) of the ChunkFS daemons running on this machine, from ``/proc``.

    Absolute, made so from each process's working directory, and not resolved further (resolving
    could stat a hung FUSE mount).  Processes that cannot be inspected are left out.
    """
    found: list[Path] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            argv = Path(entry.path, "cmdline").read_bytes().decode(errors="surrogateescape").split("\0")
            cwd = os.readlink(Path(entry.path, "cwd"))
        except OSError:
            continue
        args = _chunkfs_args(argv)
        if args is None or not set(args) & {"mds", "cs"}:
            continue
        for flag, value in itertools.pairwise(args):
            if flag in ("-r", "--dir") and value:
                found.append(Path(os.path.normpath(os.path.join(cwd, value))))
    return found


def is_chunkfs_process(pid: int, names: Path) -> bool:
    """Whether process `pid` runs a ``chunkfs`` command that names the path `names` (a node directory).

    Read from ``/proc/PID/cmdline``; a relative argument is taken from the
    process's own working directory.  False when the process is gone or
    cannot be inspected: never guess that a stranger is ours.
    """
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    if _chunkfs_args(argv) is None:
        return False
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        cwd = None
    # Nothing is resolved past the parent of `names`, and arguments are compared as written (made
    # absolute): resolving a mount point could stat a hung FUSE mount.  Daemons started by chunkfs
    # carry resolved directories.
    written = os.path.normpath(os.path.abspath(names))
    targets = {written, os.path.join(os.path.realpath(os.path.dirname(written)), os.path.basename(written))}
    for arg in argv[1:]:
        value = arg.split("=", 1)[1] if arg.startswith("--") and "=" in arg else arg
        if not value or value.startswith("-"):
            continue
        if os.path.isabs(value):
            path = value
        elif cwd is not None:
            path = os.path.join(cwd, value)
        else:
            continue
        if os.path.normpath(path) in targets:
            return True
    return False


def daemon_pid(directory: Path) -> int | None:
    """The PID of the daemon running on node directory `directory`, from its PID file, checked in /proc."""
    pid = read_pid(directory)
    return pid if pid is not None and is_chunkfs_process(pid, directory) else None


def wait_exit(pid: int, timeout: float) -> bool:
    """Wait (bounded) for process `pid` to exit, reaping it if this process started it; True once it has."""
    deadline = time.monotonic() + timeout
    while True:
        if reap(pid, 0):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


#: Stopping longer than this is logged; tasks left at the end get this long to unwind.
STOP_SLOW = 2.0


#: Exit status of a daemon that stopped itself on an error it cannot serve through (a full or
#: failing disk): systemd's ``Restart=on-failure`` starts it again, unlike status 1 (a bad
#: configuration, which the units exclude with ``RestartPreventExitStatus=1``).
EXIT_FATAL = 3


class ForGood(str):
    """A reason to stop that no restart mends (the node was removed from the cluster): the daemon exits
    with status 1, as for a bad configuration, which the systemd units do not restart (a removed chunk
    server exiting with status 3 was started again every 2 s, for ever: an operator probe)."""


def refuse_if_running(directory: Path) -> None:
    """ConfigError if another daemon runs on `directory`: checked before anything touches the folder
    (its log rotated, its replicas scanned) as well as before serving."""
    running = daemon_pid(directory)
    if running is not None and running != os.getpid():
        raise ConfigError(f"a daemon is already running on {directory} (pid {running}); stop it first")


def run_foreground(
    directory: Path, start: Callable[[], Awaitable[Any]], stop: Callable[[], Awaitable[Any]],
    fatal: Callable[[], Awaitable[str]] | None = None,
) -> int:
    """Run a server until SIGTERM or SIGINT, or until `fatal` returns a reason to stop; the exit status."""
    refuse_if_running(directory)
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    done = asyncio.Event()
    status = 0

    async def main() -> None:
        nonlocal status
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, done.set)
        await start()
        # Written once the daemon serves: `start_background` waits for it.
        try:
            write_file_durably(directory / PID_FILE, f"{os.getpid()}\n".encode())
        except OSError as exc:
            # A full disk, most likely: status 3 (the units start it again until there is room), not a
            # bare error with status 1 that they leave down (a fault probe).
            status = EXIT_FATAL
            logger.critical("stopping with status %d: cannot write %s (%s): free space there", status,
                            directory / PID_FILE, exc.strerror or exc)
            await stop()
            return
        waits = [loop.create_task(done.wait())]
        if fatal is not None:
            waits.append(loop.create_task(fatal()))
        ended, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        if waits[0] in ended:
            logger.info("stopping on signal")
        else:
            reason = waits[1].result()
            status = 1 if isinstance(reason, ForGood) else EXIT_FATAL
            logger.critical("stopping with status %d: %s", status, reason)
        started = time.monotonic()
        await stop()
        if time.monotonic() - started > STOP_SLOW:
            logger.warning("stopping took %.1f s", time.monotonic() - started)

    try:
        loop.run_until_complete(main())
    finally:
        with contextlib.suppress(OSError):
            if read_pid(directory) == os.getpid():
                (directory / PID_FILE).unlink()
        unwind(loop)
        loop.close()
    return status


def unwind(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what is still running (started while the server stopped, or a command cut off by
    Ctrl-C) and let it finish, bounded, before the loop closes.

    A task still pending when the loop closes is destroyed half way ("Task was
    destroyed but it is pending!" and a traceback in the log).
    """
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    if not pending:
        return
    for task in pending:
        task.cancel()
    loop.run_until_complete(asyncio.wait(pending, timeout=STOP_SLOW))
    left = [t for t in pending if not t.done()]
    if left:
        logger.warning("%d task(s) did not stop: %s", len(left), ", ".join(t.get_coro().__qualname__ for t in left))


def bind_error(addr: str, exc: OSError) -> ConfigError:
    if exc.errno == errno.EADDRINUSE:
        return ConfigError(f"cannot listen on {addr}: address already in use: stop what listens there, or give "
                           "this node another address (\"addr\" in its node.json, or make it again with -a)")
    return ConfigError(f"cannot listen on {addr}: {exc.strerror or exc}")


#: Daemons this process started, kept so they can be reaped (and are not
#: reported as leaked when the Popen object would otherwise be collected).
_children: dict[int, subprocess.Popen[bytes]] = {}


def reap(pid: int, timeout: float) -> bool:
    """Wait (bounded) for a daemon this process started to exit; True once it has."""
    child = _children.get(pid)
    if child is None:
        return not pid_alive(pid)
    try:
        child.wait(timeout)
    except subprocess.TimeoutExpired:
        return False
    del _children[pid]
    return True


def start_background(
    argv: list[str], directory: Path, addr: str, names: Path | None = None, prefix: list[str] | None = None,
) -> int:
    """Start `argv` detached, logging to the node directory; wait until it serves.

    The daemon writes its PID file only once it listens, so a port held by
    someone else is never mistaken for a started daemon.  A PID file counts as
    a running daemon only if that process is a ``chunkfs`` command naming
    `names` (default: `directory`), so a stale one whose number was reused
    does not stop the start.  `prefix` runs the command through another that
    execs it (``nsenter --net=...``: a daemon in a network namespace; same PID).
    """
    pid = read_pid(directory)
    running = pid if pid is not None and is_chunkfs_process(pid, names or directory) else None
    if running is not None:
        raise ConfigError(f"a daemon is already running on {directory} (pid {running})")
    log_path = directory / LOG_FILE
    with open(log_path, "ab") as log:
        # Its own directory as working directory: a daemon must not hold (or depend on) the
        # launcher's, which may be removed or unmounted while it runs.  Paths in `argv` are absolute.
        child = subprocess.Popen(
            [*(prefix or []), sys.executable, "-m", "chunkfs", *argv],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, cwd=directory,
        )
    _children[child.pid] = child
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if child.poll() is not None:
            del _children[child.pid]
            raise Unavailable(f"the daemon exited with status {child.returncode}: {last_error(log_path)}")
        if read_pid(directory) == child.pid:
            return child.pid
        time.sleep(0.05)
    child.kill()
    child.wait()
    raise Unavailable(f"the daemon did not start listening on {addr} within {START_TIMEOUT:g}s; see {log_path}")


#: How much of the end of a log `last_error` reads (a log may be tens of MiB).
LOG_TAIL = 64 << 10


#: Less free space than this where a daemon that said nothing failed to start: the disk is why.
FULL_DISK_LEFT = 1 << 20


def last_error(log_path: Path) -> str:
    with contextlib.suppress(OSError), open(log_path, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - LOG_TAIL))
        lines = [line for line in f.read().decode(errors="replace").splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("chunkfs: error: ")]
        if errors or lines:
            return (errors or lines)[-1].removeprefix("chunkfs: error: ")
    with contextlib.suppress(OSError):
        fs = os.statvfs(log_path.parent)
        if fs.f_bavail * fs.f_frsize < FULL_DISK_LEFT:
            # Nothing in its log, which the full disk kept out (a probe: "see daemon.log", 0 bytes).
            return f"the disk holding {log_path.parent} is full (its log is empty): free space there"
    return f"see {log_path}"


def _ephemeral_range() -> tuple[int, int]:
    with contextlib.suppress(OSError, ValueError):
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    return 32768, 60999


#: Ports `free_port` returned lately: a cluster made in one go asks for a dozen before any daemon
#: binds one, and two of them must not be the same (a daemon then fails with "address in use").
_handed_out: collections.deque[int] = collections.deque(maxlen=4096)


#: `free_port`'s range as ``LOW-HIGH``: processes that make clusters at the same moment (test
#: workers) each get a range of their own, so neither takes a port the other chose but has not bound.
PORTS_ENV = "CHUNKFS_PORTS"
#: The lowest port `free_port` chooses by default (the highest is below the kernel's ephemeral range).
FIRST_FREE_PORT = 10000


def port_range() -> tuple[int, int]:
    """The ports `free_port` chooses from, both included: ``$CHUNKFS_PORTS`` or the default."""
    value = os.environ.get(PORTS_ENV)
    if not value:
        return FIRST_FREE_PORT, max(FIRST_FREE_PORT, _ephemeral_range()[0] - 1)
    low_s, _, high_s = value.partition("-")
    try:
        low, high = int(low_s), int(high_s)
    except ValueError:
        low, high = 0, -1
    if not 1024 <= low <= high <= 65535:
        raise ConfigError(f"{PORTS_ENV}={value!r}: give a range LOW-HIGH within 1024-65535, or unset it")
    return low, high


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free now, for a daemon that binds it later.

    Chosen below the kernel's ephemeral range: ports the kernel hands to
    outgoing connections in the meantime can then never take it.
    """
    low, high = port_range()
    rng = random.Random()  # noqa: S311 - spreading ports, not security
    for _ in range(200):
        port = rng.randint(low, high)
        if port in _handed_out:
            continue  # free now, but promised to a daemon made a moment ago that has not bound it yet
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            _handed_out.append(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
