"""Running a mount: one process, one event loop, one FUSE session.

`run_mount` connects to the cluster (failing before anything is mounted if
it cannot), mounts, writes its PID file once the mount exists — which is what
``chunkfs mount --background`` and ``chunkfs umount`` wait for — serves
requests until unmounted or signalled, then closes everything.

Each mount point gets a small state directory (PID file, and the log of a
background mount) under ``$CHUNKFS_RUN_DIR`` (default ``/run/chunkfs`` for
root, a folder in the temporary directory otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pyfuse3

from chunkfs.client import dead_mount_guard, fuse_wait
from chunkfs.client.client import Client
from chunkfs.client.fuse_ops import ChunkFSOperations, MountOptions
from chunkfs.common.config import ClientConfig
from chunkfs.common.daemon import PID_FILE, START_TIMEOUT, new_event_loop, pid_alive, read_pid
from chunkfs.common.durable import write_file_durably
from chunkfs.common.errors import ConfigError, Unavailable
from chunkfs.common.loop_lag import LoopLagMonitor
from chunkfs.common.timings import TIMINGS
from chunkfs.protocol.mds_link import DEFAULT_RETRY_FOR
from chunkfs.protocol.messages import LEASE_TTL, ROOT_INO

logger = logging.getLogger(__name__)

UNMOUNT_TIMEOUT = 20.0
#: How long `unmount` waits for the mount process to exit once the kernel let go: a FUSE request
#: still in flight may spend the client's whole retry window on the master (the process ends only
#: when every request has), then the leases and the session are handed back (LEASE_TTL / 2 at most)
#: and its connections closed: a whole LEASE_TTL leaves room for both.
EXIT_WAIT = DEFAULT_RETRY_FOR + LEASE_TTL
#: How long a lazy unmount waits for the mount process before saying it serves files still open, seconds.
LAZY_EXIT_WAIT = 5.0
#: Written in the mount's state folder on SIGUSR1 (common/timings.py).
TIMINGS_FILE = "timings.json"


def run_dir() -> Path:
    default = "/run/chunkfs" if os.geteuid() == 0 else os.path.join(tempfile.gettempdir(), f"chunkfs-{os.getuid()}")
    return Path(os.environ.get("CHUNKFS_RUN_DIR", default))


def canonical(mountpoint: Path) -> Path:
    """The absolute path of a mount point without touching the mount point itself.

    Only its parent is resolved: a stat of a hung or dead FUSE mount would
    block or fail (and from inside the mount process, deadlock).
    """
    path = Path(os.path.abspath(mountpoint))
    return path.parent.resolve() / path.name if path.name else path


def state_dir(mountpoint: Path) -> Path:
    """The mount's own folder: PID file and (background) log."""
    path = str(canonical(mountpoint))
    tag = hashlib.sha256(path.encode()).hexdigest()[:12]
    name = path.strip("/").replace("/", "_")[-60:] or "root"
    return run_dir() / "mounts" / f"{name}-{tag}"


def is_mounted(mountpoint: Path) -> bool:
    """Whether `mountpoint` is a mount point, from /proc (no request to a possibly hung FUSE server)."""
    target = str(canonical(mountpoint))
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split(" ")
            if len(fields) > 4 and _unescape(fields[4]) == target:
                return True
    return False


#: The file-system type a ChunkFS mount shows in /proc/self/mountinfo (FUSE's type and our ``subtype``).
FSTYPE = "fuse.chunkfs"
#: How long a stat of a mount point may take before the mount counts as hung (alive), not dead.
PROBE_TIMEOUT = 5.0


def _mount_fstype(mountpoint: Path) -> str | None:
    """The file-system type of the top mount at `mountpoint` (already canonical), from /proc."""
    target = str(mountpoint)
    with contextlib.suppress(OSError):
        for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
            fields = line.split(" ")
            if len(fields) > 4 and _unescape(fields[4]) == target and " - " in line:
                return line.split(" - ", 1)[1].split(" ")[0]
    return None


def _stat_errno(path: Path, timeout: float) -> int | None:
    """The errno of stat(`path`) (0 if it worked), or None if it did not answer within `timeout`.

    The stat runs on a daemon thread: a hung FUSE server may never answer it,
    and then the thread is left behind rather than this process blocked.
    """
    result: list[int] = []

    def probe() -> None:
        try:
            os.stat(path)
            result.append(0)
        except OSError as exc:
            result.append(exc.errno or -1)

    thread = threading.Thread(target=probe, name="mount-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return result[0] if result else None


def is_dead_mount(mountpoint: Path, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether a FUSE mount sits on `mountpoint` whose server is gone ("Transport endpoint is not connected").

    A live mount, of any process and even a slow or hung one, is not dead.  The probe looks up a
    name that does not exist: the kernel may answer a stat of the mount point itself from its
    attribute cache for a while after the server died, but a new name always goes to the server.
    """
    mnt = canonical(mountpoint)
    fstype = _mount_fstype(mnt)
    if fstype is None or fstype.split(".")[0] not in ("fuse", "fuseblk"):
        return False
    # ECONNABORTED: the connection was aborted (through /sys/fs/fuse/connections) or the probe was in
    # flight while the server's last thread exited.
    return _stat_errno(mnt / f".chunkfs-probe-{os.urandom(8).hex()}", timeout) in (errno.ENOTCONN,
                                                                                   errno.ECONNABORTED)


def _fusermount(mountpoint: Path, lazy: bool, timeout: float, what: str) -> subprocess.CompletedProcess[str]:
    """``fusermount3 -u [-z] MOUNTPOINT``, bounded; a missing tool or a hang is a one-line error."""
    argv = ["fusermount3", "-u", *(["-z"] if lazy else []), str(mountpoint)]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise ConfigError("fusermount3 is not installed (Debian: apt-get install fuse3)") from None
    except subprocess.TimeoutExpired:
        raise Unavailable(f"fusermount3 did not {what} {mountpoint} within {timeout:g}s") from None


def clear_dead_mount(mountpoint: Path, timeout: float = UNMOUNT_TIMEOUT) -> bool:
    """Lazily unmount a dead FUSE mount on `mountpoint` (its server was killed); True if there was one.

    Leaves any other mount alone: mounting over it is then refused, as before.
    """
    mnt = canonical(mountpoint)
    cleared = False
    for _ in range(8):  # dead mounts stacked on one another, each cleared in turn
        if not is_dead_mount(mnt):
            break
        done = _fusermount(mnt, True, timeout, "clear the dead mount on")
        if done.returncode != 0:
            raise ConfigError(f"{mnt} holds a dead mount (transport endpoint is not connected) that could not "
                              f"be cleared: {done.stderr.strip() or done.returncode}; try: fusermount3 -u -z {mnt}")
        logger.warning("cleared a dead mount on %s (its FUSE server was gone): unmounted it lazily", mnt)
        cleared = True
    if cleared:
        sdir = state_dir(mnt)
        with contextlib.suppress(OSError):
            if read_pid(sdir) is None:
                (sdir / PID_FILE).unlink()  # left by the killed mount process
    return cleared


def _mount_dev(mountpoint: Path) -> str | None:
    """``major:minor`` of the mount at `mountpoint` (already resolved), read from /proc.

    Never stat or resolve the mount point from inside the mount process: that
    is a FUSE request to ourselves, on the loop that would have to answer it.
    """
    target = str(mountpoint)
    with contextlib.suppress(OSError):
        for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
            fields = line.split(" ")
            if len(fields) > 4 and _unescape(fields[4]) == target:
                return fields[2]
    return None


def _unescape(text: str) -> str:
    return text.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


#: Where the kernel shows each FUSE connection's limits (the fusectl file system, mounted at boot by
#: systemd; scripts/install.sh mounts it where nothing did).
FUSECTL = Path("/sys/fs/fuse/connections")


def fusectl_dir(dev: str) -> Path:
    """The fusectl folder of the FUSE connection behind device ``major:minor`` (named by the kernel's dev_t)."""
    major, minor = (int(x) for x in dev.split(":"))
    return FUSECTL / str(major << 20 | minor)


def tune_kernel(mountpoint: Path, opts: MountOptions) -> None:
    """The kernel's settings for this mount that FUSE's INIT cannot ask for: read-ahead, requests in flight."""
    set_readahead(mountpoint, opts.readahead_kb)
    set_max_background(mountpoint, opts.max_background)


def set_max_background(mountpoint: Path, requests: int) -> None:
    """Let the kernel keep `requests` background requests in flight to this mount (its default is 12).

    Asynchronous direct I/O (a VM's disk, fio with libaio) and read-ahead are
    background requests: at 12, a queue of 16 writes had 4 waiting in the
    kernel (16 in flight: +10 % 4 KiB random writes at QD16 here).  Best
    effort: needs root and fusectl mounted.
    """
    dev = _mount_dev(mountpoint)
    if not requests or dev is None:
        return
    conn = fusectl_dir(dev)
    if not conn.is_dir():
        logger.info("%s not mounted (mount -t fusectl none %s): keeping the kernel's 12 requests in flight",
                    FUSECTL, FUSECTL)
        return
    try:
        (conn / "max_background").write_text(f"{requests}\n")
        # Past this many, the kernel counts the mount as congested and holds read-ahead back.
        (conn / "congestion_threshold").write_text(f"{max(1, requests * 3 // 4)}\n")
        logger.info("requests in flight to %s raised to %d", mountpoint, requests)
    except OSError as exc:
        logger.info("could not raise the requests in flight to %s (%s): keeping the kernel's", mountpoint, exc)


def set_readahead(mountpoint: Path, kib: int) -> None:
    """Raise the kernel's read-ahead for this mount (FUSE caps it at 128 KiB when INIT is answered).

    Sequential reads then arrive as requests of up to 1 MiB, several in
    flight, instead of one 128 KiB request at a time: 2x the throughput of a
    cold `dd` read here.  Call it after INIT (`ChunkFSOperations.on_init`),
    which would lower it again.  Best effort: needs root.
    """
    dev = _mount_dev(mountpoint)
    if not kib or dev is None:
        return
    path = Path("/sys/class/bdi") / dev / "read_ahead_kb"
    try:
        path.write_text(f"{kib}\n")
        logger.info("read-ahead of %s set to %d KiB", mountpoint, kib)
    except OSError as exc:
        logger.info("could not set read-ahead of %s (%s): keeping the kernel's", mountpoint, exc)


def fuse_options(cluster: str, opts: MountOptions) -> set[str]:
    """FUSE's options for a mount.

    ``default_permissions``: the kernel checks mode bits against the owner
    every file shows (the mounting user, or ``-o uid=,gid=``).  A mount made
    by root is for the whole machine (``allow_other``), as a local disk is:
    services that run as their own user — qemu under libvirt, a database —
    can then open what the mode bits allow them (``-o private`` keeps it to
    root alone).
    """
    options = set(pyfuse3.default_options)
    options |= {f"fsname=chunkfs:{cluster}", f"subtype={FSTYPE.removeprefix('fuse.')}", "noatime"}
    if os.geteuid() == 0 and not opts.private:
        options.add("allow_other")
    return options | opts.fuse


def run_mount(
    config: ClientConfig, mountpoint: Path, opts: MountOptions, on_ready: Callable[[], None] | None = None
) -> int:
    """Mount and serve until unmounted (``chunkfs umount``) or SIGTERM/SIGINT; return the exit status."""
    mountpoint = canonical(mountpoint)
    if not mountpoint.is_dir():
        raise ConfigError(f"mount point {mountpoint} is not a directory")
    if is_mounted(mountpoint):
        raise ConfigError(f"{mountpoint} is already a mount point; unmount it first (chunkfs umount {mountpoint})")
    sdir = state_dir(mountpoint)
    sdir.mkdir(parents=True, exist_ok=True)
    running = read_pid(sdir)
    if running is not None and running != os.getpid():
        raise ConfigError(f"a mount of {mountpoint} is already running (pid {running})")
    fuse_wait.install()
    loop = new_event_loop()
    asyncio.set_event_loop(loop)

    async def main() -> None:
        client = Client(config, name=f"mount-{socket.gethostname()}-{os.getpid()}")
        lag = LoopLagMonitor(f"mount {mountpoint}")  # a WARNING naming the call when the loop stalls
        lag.start()
        try:
            # Fail here, before mounting, if the cluster is unreachable: within half of what `mount
            # --background` waits for its daemon, so that it reports this error, not a timeout of its own
            # pointing to a log with nothing in it (found by a probe).
            client.mds.retry_for = min(client.mds.retry_for, START_TIMEOUT / 2)
            await client.getattr(ROOT_INO)
            client.mds.retry_for = opts.master_wait  # (not before: a mount of a cluster that is down fails at once)
            client.mds.wait_out_unknown = True  # a change failed with EIO must not be made later (mds_link.py)
            client.io.local.enabled = opts.local_reads
            ops = ChunkFSOperations(client, opts)
            ops.holder = f"{socket.gethostname()}:{mountpoint} (pid {os.getpid()})"[-256:]
            try:
                pyfuse3.init(ops, str(mountpoint), fuse_options(config.cluster.name, opts))
            except RuntimeError as exc:
                # libfuse prints which option it refused to stderr (the daemon's log): name the ones passed on.
                theirs = f" (FUSE refused one of: {', '.join(sorted(opts.fuse))}: see mount.fuse3(8))" \
                    if opts.fuse else ""
                raise Unavailable(f"cannot mount {mountpoint}: {exc}{theirs}") from None
            dev = _mount_dev(mountpoint)
            guard = dead_mount_guard.start(fusectl_dir(dev) / "abort") if dev is not None else None
            try:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.add_signal_handler(sig, pyfuse3.terminate)
                loop.add_signal_handler(signal.SIGUSR1, _write_timings, sdir)
                # Not before: answering INIT sets the read-ahead back to 128 KiB (it did, and every
                # sequential read came as 128 KiB requests).
                ops.on_init = lambda: tune_kernel(mountpoint, opts)
                write_file_durably(sdir / PID_FILE, f"{os.getpid()}\n".encode())
                logger.info("cluster %r mounted on %s", config.cluster.name, mountpoint)
                ops.start_watching()
                if on_ready is not None:
                    on_ready()
                await pyfuse3.main(min_tasks=2, max_tasks=opts.max_tasks)
                # Logged apart from "unmounted": when `umount` finds the process slow to exit, the log
                # then tells a FUSE request still being served from the leases and session handed back.
                logger.info("%s: the kernel ended the FUSE session; handing back leases and the session",
                            mountpoint)
            finally:
                fuse_wait.READABLE.stop_all()  # before pyfuse3 closes the descriptor
                await ops.close()  # hand back exclusive leases
                # Lazy unmount when the loop ended on a signal; a no-op after `umount`.
                pyfuse3.close(unmount=True)
                if guard is not None:  # (a mount that ends on its own leaves nothing to guard)
                    guard.kill()
                    guard.wait()
                logger.info("%s unmounted", mountpoint)
        finally:
            await lag.stop()
            await client.close()

    try:
        loop.run_until_complete(main())
    finally:
        with contextlib.suppress(OSError):
            if read_pid(sdir) == os.getpid():
                (sdir / PID_FILE).unlink()
        loop.close()
    return 0


def _write_timings(sdir: Path) -> None:
    """``kill -USR1`` on a mount: its timings (each FUSE request, each master request) to timings.json."""
    path = sdir / TIMINGS_FILE
    try:
        write_file_durably(path, json.dumps(TIMINGS.snapshot(), indent=1).encode())
    except OSError as exc:
        logger.warning("could not write %s: %s", path, exc)
        return
    logger.info("timings written to %s", path)


def unmount(mountpoint: Path, lazy: bool = False, timeout: float = EXIT_WAIT) -> str:
    """Unmount with fusermount3, then wait (bounded) for the mount process to exit; a note for the
    operator when a lazy unmount leaves it serving files still open ("" otherwise)."""
    mountpoint = canonical(mountpoint)
    sdir = state_dir(mountpoint)
    pid = read_pid(sdir)
    dev = None
    if not is_mounted(mountpoint):
        if pid is None:
            raise ConfigError(f"{mountpoint} is not mounted")
    else:
        fstype = _mount_fstype(mountpoint)
        if fstype != FSTYPE:
            # As root, fusermount3 unmounts any file system: one named by mistake must stay mounted.
            raise ConfigError(f"{mountpoint} is a {fstype or 'non-ChunkFS'} mount, not a ChunkFS one: nothing "
                              "unmounted (use umount(8) for it)")
        dev = _mount_dev(mountpoint)
        done = _fusermount(mountpoint, lazy, timeout, "unmount")
        if done.returncode != 0:
            raise Unavailable(
                f"cannot unmount {mountpoint}: {done.stderr.strip() or done.returncode} "
                "(files still open? close them, or use --lazy)"
            )
    if pid is not None:
        deadline = time.monotonic() + (min(timeout, LAZY_EXIT_WAIT) if lazy else timeout)
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(pid):
            held = dev is not None and fusectl_dir(dev).is_dir()
            if held and lazy:
                # What --lazy is for: the files still open keep the process, which goes once they are
                # closed (a probe was told to `kill` it, which would break the programs using them).
                return (f"{mountpoint} is detached; its mount process {pid} serves the files still open until "
                        f"they are closed (`kill {pid}` would cut their programs off)")
            if held and not lazy:
                # The kernel removes a connection's fusectl folder when the mount's last copy goes.
                raise Unavailable(
                    f"{mountpoint} is unmounted here, but another mount namespace (a container, `unshare -m`, "
                    f"`ip netns exec`) made a copy of it while it was mounted, and its mount process {pid} serves "
                    f"that copy until it goes; end it now with: echo 1 > {fusectl_dir(dev) / 'abort'}")
            raise Unavailable(f"{mountpoint} is unmounted but its mount process {pid} has not exited after "
                              f"{timeout:.0f} s: see the log in {sdir}, or stop it with `kill {pid}`")
    return ""
