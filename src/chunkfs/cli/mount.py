"""`chunkfs mount` and `chunkfs umount`: the cluster as a FUSE file system."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

from chunkfs.cli.arg_types import mountpoint as arg_mountpoint
from chunkfs.cli.context import need_cluster
from chunkfs.common.config import DEFAULT_LOG_BACKUPS, DEFAULT_LOG_MAX_SIZE, load_client_config
from chunkfs.common.daemon import LOG_FILE, rotate_log, running_node_dirs, start_background
from chunkfs.common.errors import ConfigError

MOUNT_HELP = """\
options (-o, comma-separated, may repeat):
  cache_timeout=S                  how long the kernel keeps names and attributes (and the
                                   mount, names that do not exist) while the master tells this
                                   mount of every other client's change (default 60; 0: never
                                   longer than the two below; the mount hears of other
                                   clients' changes either way)
  attr_timeout=S, entry_timeout=S  ... and when it does not (no connection to a master yet,
                                   or a lost one): seconds (default 1; 0 turns the caches off)
  direct_io                        no page cache for any file (O_DIRECT opens never use it); no
                                   writable shared mmap then (ENODEV: SQLite's WAL mode needs one)
  readahead_kb=N                   kernel read-ahead, KiB (default 4096; 0 keeps the kernel's)
  max_tasks=N                      requests served at once (default 64)
  max_background=N                 requests the kernel keeps in flight without a process waiting
                                   on each: read-ahead, a VM's queued direct I/O (default 64;
                                   the kernel's own is 12; needs fusectl mounted; 0 keeps it)
  exclusive                        lease each file opened for writing to this mount: another
                                   exclusive mount's open for writing fails with EBUSY
  uid=USER, gid=GROUP              the owner every file shows (name or number; default: the
                                   mounting user); the kernel checks mode bits against it
  private                          a root mount for root alone (by default a mount made by
                                   root is open to every local user: allow_other)
  master_wait=S                    how long a request waits for a master (none elected, or the
                                   metadata servers down) before it fails with EIO: seconds
                                   (default 20; for VM images, longer than any outage you
                                   would rather ride out than see as I/O errors in a guest)
  local_reads=0|1                  small reads (up to 128 KiB) of replicas kept by a chunk server
                                   on this machine are made from their files, without a request
                                   to that server; every block is checked against its checksum
                                   (default 1; 0: every read asks a chunk server)
  anything else                    passed to FUSE, e.g. ro
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "mount", help="mount the cluster as a file system (FUSE)", epilog=MOUNT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Mount cluster NAME on MOUNTPOINT. In the foreground by default (logs on stderr, "
        "Ctrl-C unmounts); with --background, return once the mount is ready.",
    )
    p.add_argument("mountpoint", type=arg_mountpoint, help="an existing directory")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPTIONS",
                   help="mount options (see below)")
    p.add_argument("--background", action="store_true", help="detach; return once mounted")
    p.set_defaults(func=cmd_mount)
    p = sub.add_parser("umount", help="unmount a ChunkFS mount and wait for its process to exit",
                       description="Unmount MOUNTPOINT (fusermount3 -u) and wait until its mount process exits "
                       "(bounded: as long as a request still in flight may wait for the master, plus the hand-back of "
                       "its leases).")
    p.add_argument("mountpoint", type=arg_mountpoint,
                   help="where the cluster is mounted (only a ChunkFS mount is unmounted)")
    p.add_argument("-z", "--lazy", action="store_true", help="detach now even if files are open")
    p.set_defaults(func=cmd_umount)


def clear_dead(mountpoint: Path) -> bool:
    """Clear a dead mount on `mountpoint` (its mount process is gone), saying so; True if there was one."""
    from chunkfs.client.fuse_session import clear_dead_mount, is_mounted

    if not (is_mounted(mountpoint) and clear_dead_mount(mountpoint)):
        return False
    print(f"cleared a dead mount on {mountpoint} (transport endpoint is not connected: its mount process "
          "was gone); unmounted it lazily", flush=True)
    return True


def hides(mountpoint: Path, folder: Path) -> bool:
    """Whether a mount on `mountpoint` is on `folder`, on a folder holding it, or inside it."""
    return mountpoint == folder or mountpoint in folder.parents or folder in mountpoint.parents


def refuse_over_node_dirs(mountpoint: Path) -> None:
    """Refuse a mount point that is, holds or lies in the folder of a ChunkFS daemon running here.

    Mounted there, the cluster hides the daemon's own files from it: a probe mounted a cluster on
    the folder holding its servers' folders, and its chunk servers and metadata server stopped
    (their data "cannot be read"), while every later command hung on the mount.
    """
    for node_dir in running_node_dirs():
        if hides(mountpoint, node_dir):
            raise ConfigError(f"mount point {mountpoint} would hide {node_dir}, the folder of a ChunkFS daemon "
                              "running on this machine: mount in a folder of its own, outside every node's folder")


def cmd_mount(args: argparse.Namespace) -> int:
    from chunkfs.client.fuse_ops import parse_options
    from chunkfs.client.fuse_session import canonical, is_mounted, run_mount, state_dir

    opts = parse_options(args.options)  # a bad option is named before anything else is looked at
    name = need_cluster(args)
    config = load_client_config(name)
    mountpoint = canonical(args.mountpoint)
    clear_dead(mountpoint)
    if not mountpoint.exists():
        raise ConfigError(f"mount point {mountpoint} does not exist; create it first (mkdir -p {mountpoint})")
    if not mountpoint.is_dir():
        raise ConfigError(f"mount point {mountpoint} is not a directory")
    if not Path("/dev/fuse").exists():
        raise ConfigError("/dev/fuse is missing: load the fuse module (modprobe fuse) or run with --device /dev/fuse")
    if shutil.which("fusermount3") is None:
        raise ConfigError("fusermount3 is not installed (Debian: apt-get install fuse3)")
    if is_mounted(mountpoint):
        raise ConfigError(f"{mountpoint} is already a mount point; unmount it first (chunkfs umount {mountpoint})")
    refuse_over_node_dirs(mountpoint)
    if any(mountpoint.iterdir()):  # (a probe: mounted without a word)
        print(f"warning: {mountpoint} is not empty: what is in it stays hidden while the cluster is mounted there",
              file=sys.stderr)
    if args.background:
        sdir = state_dir(mountpoint)
        sdir.mkdir(parents=True, exist_ok=True)
        argv = ["-c", name, *(["-v"] if args.verbose else []), "mount", str(mountpoint)]
        for text in args.options:
            argv += ["-o", text]
        pid = start_background(argv, sdir, str(mountpoint), names=mountpoint)
        print(f"cluster {name!r} mounted on {mountpoint} (pid {pid}, log {sdir / LOG_FILE}); "
              f"unmount with: chunkfs umount {mountpoint}")
        return 0
    # The mount is a daemon: its log lines matter (main() quiets other commands).
    logging.getLogger().setLevel(logging.DEBUG if args.verbose else logging.INFO)
    # In the background (stderr is the state folder's log) the log rotates as a daemon's does by default.
    rotate_log(state_dir(mountpoint) / LOG_FILE, DEFAULT_LOG_MAX_SIZE, DEFAULT_LOG_BACKUPS)
    return run_mount(config, mountpoint, opts, on_ready=lambda: print(
        f"cluster {name!r} mounted on {mountpoint}; Ctrl-C or `chunkfs umount {mountpoint}` unmounts",
        file=sys.stderr, flush=True))


def cmd_umount(args: argparse.Namespace) -> int:
    from chunkfs.client.fuse_session import unmount

    note = unmount(args.mountpoint, lazy=args.lazy)
    if note:
        print(note)
    return 0
