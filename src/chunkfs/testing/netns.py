"""Hosts, not just ports: a cluster whose daemons each run in a network namespace of their own.

`NetHosts` makes a small network on this machine: a *switch* namespace
holding a bridge, and for each host a namespace joined to it by a veth pair,
with an address of its own (10.77.N.x/24).  Failure domains are then real
hosts (each daemon has its own address and loopback), and a partition is a
link going down (`cut` / `mend`), not a process being stopped.  The test's
own commands run in a *client* namespace on the same bridge, so nothing here
touches an address outside the namespaces it made.

Needs root and ``ip`` (iproute2); `available()` says why not otherwise, for
the tests to skip with that reason.  Everything made is removed by `close()`
(namespaces, links) and every daemon started is stopped by PID.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from chunkfs.common.daemon import daemon_pid, start_background, wait_exit

#: Ports every daemon uses on its host's own address.
MDS_PORT, CS_PORT = 9421, 9422
#: Where ``ip netns add`` keeps each named namespace.
NETNS_DIR = Path("/run/netns")
#: Bounds on each `ip` command and each CLI command run in the client namespace.
IP_TIMEOUT, CLI_TIMEOUT = 10.0, 120.0


def available() -> str:
    """Empty if network namespaces can be made here, else why not (a reason to skip)."""
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed"
    if shutil.which("nsenter") is None:
        return "`nsenter` (util-linux) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"cfs-probe-{os.getpid()}"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=IP_TIMEOUT,
                          check=False)
    if done.returncode != 0:
        return f"cannot make a network namespace here: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=IP_TIMEOUT, check=False)
    return ""


def _ip(*args: str, ns: str | None = None) -> None:
    argv = ["ip", *(["-n", ns] if ns else []), *args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=IP_TIMEOUT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")


@dataclass(slots=True)
class Host:
    name: str
    ns: str
    ip: str
    #: The veth end in the switch namespace: down = this host cut off.
    port: str
    daemons: list[Path] = field(default_factory=list)


def enter(host: Host) -> list[str]:
    """The command prefix that runs a program in `host`'s network namespace, and only that namespace.

    Not ``ip netns exec``: it also gives the program a mount namespace of its
    own, a private copy of every mount there was at that moment.  A FUSE mount
    copied into it outlives its unmount here until that program exits, so a
    test's ``chunkfs umount`` beside this one waited 37 s for its mount
    process (the kernel ends a FUSE session only when its last copy goes).
    nsenter joins the network namespace alone, and execs the program (same PID).
    """
    return ["nsenter", f"--net={NETNS_DIR / host.ns}", "--"]


class NetHosts:
    """A switch, hosts around it, and a client namespace for the test's own commands."""

    def __init__(self, base: Path, cluster: str) -> None:
        self.base = base
        self.cluster = cluster
        self.tag = f"{os.getpid() % 10000:04d}"
        #: 10.77.N.0/24, N from the PID: two runs at once do not share a subnet.
        self.subnet = f"10.77.{os.getpid() % 250 + 1}"
        self.switch = f"cfs{self.tag}-sw"
        self.hosts: dict[str, Host] = {}
        self.env = {**os.environ, "CHUNKFS_CONF_DIR": str(base / "conf")}
        _ip("netns", "add", self.switch)
        _ip("link", "add", "br0", "type", "bridge", ns=self.switch)
        _ip("link", "set", "br0", "up", ns=self.switch)
        self.client = self.add_host("client")

    def add_host(self, name: str) -> Host:
        number = len(self.hosts) + 2
        ns, port = f"cfs{self.tag}-{name}", f"p{number}"
        _ip("netns", "add", ns)
        _ip("link", "add", port, "netns", self.switch, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("link", "set", port, "master", "br0", ns=self.switch)
        _ip("link", "set", port, "up", ns=self.switch)
        ip = f"{self.subnet}.{number}"
        _ip("addr", "add", f"{ip}/24", "dev", "eth0", ns=ns)
        _ip("link", "set", "eth0", "up", ns=ns)
        _ip("link", "set", "lo", "up", ns=ns)
        host = Host(name, ns, ip, port)
        self.hosts[name] = host
        return host

    # -- the cluster on the hosts ------------------------------------------------

    def chunkfs(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``chunkfs ARGS`` in the client namespace, with this cluster's configuration."""
        done = subprocess.run([*enter(self.client), sys.executable, "-m", "chunkfs", *args],
                              capture_output=True, text=True, timeout=CLI_TIMEOUT, env=self.env, check=False)
        if check and done.returncode != 0:
            raise RuntimeError(f"chunkfs {' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
        return done

    def make_mds(self, host: Host, init: bool = False) -> Path:
        directory = self.base / host.name / "mds"
        args = ["-c", self.cluster, "make-mds", "-a", f"{host.ip}:{MDS_PORT}", "-r", str(directory)]
        self.chunkfs(*args, *(["-I", "--chunk-size", "1M"] if init else []))
        host.daemons.append(directory)
        return directory

    def make_cs(self, host: Host, location: str = "") -> Path:
        directory = self.base / host.name / "cs"
        self.chunkfs("-c", self.cluster, "make-cs", "-a", f"{host.ip}:{CS_PORT}", "-r", str(directory),
                     "--host", host.name, *(["--location", location] if location else []))
        host.daemons.append(directory)
        return directory

    def start(self, host: Host, directory: Path) -> int:
        """Start the daemon of `directory` inside `host`'s namespace (`enter` execs it: same PID)."""
        role = directory.name
        return start_background([role, "-r", str(directory)], directory,
                                f"{host.ip}:{MDS_PORT if role == 'mds' else CS_PORT}",
                                prefix=enter(host))

    # -- failures ------------------------------------------------------------------

    def cut(self, host: Host) -> None:
        """Unplug `host`: its link to the switch goes down (its processes run on, unreachable)."""
        _ip("link", "set", host.port, "down", ns=self.switch)

    def mend(self, host: Host) -> None:
        _ip("link", "set", host.port, "up", ns=self.switch)

    def stop_daemons(self) -> None:
        for host in self.hosts.values():
            for directory in host.daemons:
                pid = daemon_pid(directory)
                if pid is None:
                    continue
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                if not wait_exit(pid, 15.0):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    wait_exit(pid, 5.0)

    def close(self) -> None:
        """Stop every daemon started here, then remove every namespace (their links go with them)."""
        try:
            self.stop_daemons()
        finally:
            for host in self.hosts.values():
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                    _ip("netns", "del", host.ns)
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                _ip("netns", "del", self.switch)
