"""Cluster-wide facts, per-node settings and client configuration.

Cluster-wide facts (name, id, chunk size, secret) are fixed when the cluster is
made.  Each daemon's directory is self-contained — ``node.json`` and ``secret``
beside its data — so a test builds a node from a temporary folder.  Clients find
a cluster by name under ``$CHUNKFS_CONF_DIR/clusters/NAME/`` (default
``/etc/chunkfs``): ``mds.list`` (one address a line, like vstorage's
``bs.list``), ``secret`` and ``cluster.json``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from chunkfs.common.addr import parse_addr
from chunkfs.common.durable import write_file_durably
from chunkfs.common.errors import ConfigError, InvalidArgument
from chunkfs.common.placement import MAX_TIER

DEFAULT_CONF_DIR = "/etc/chunkfs"
DEFAULT_CHUNK_SIZE = 256 << 20
MIN_CHUNK_SIZE = 1 << 20
MAX_CHUNK_SIZE = 1 << 30
#: Chunk sizes are whole multiples of the checksum block.
BLOCK_SIZE = 64 << 10
SECRET_BYTES = 32
DEFAULT_LOG_MAX_SIZE = 64 << 20
DEFAULT_LOG_BACKUPS = 5
MIN_LOG_MAX_SIZE = 4 << 10
MAX_LOG_MAX_SIZE = 1 << 40
MAX_LOG_BACKUPS = 1000
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_ID_RE = re.compile(r"[A-Za-z0-9-]{1,64}")

NODE_FILE = "node.json"
#: In a chunk server's folder once the cluster removed it (rm-cs): `local up` starts it no more.
REMOVED_FILE = "removed"
SECRET_FILE = "secret"  # noqa: S105 - a file name, not a secret


def conf_dir() -> Path:
    return Path(os.environ.get("CHUNKFS_CONF_DIR") or DEFAULT_CONF_DIR)  # (set but empty: the default)


def check_cluster_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise ConfigError(
            f"bad cluster name {name!r}: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def check_cluster_id(text: str) -> str:
    """The cluster's id (a uuid `make-mds` chose): every peer's HELLO carries it, so it stays short."""
    if not _ID_RE.fullmatch(text):
        raise ConfigError(f"bad cluster id (uuid) {text[:80]!r}: copy cluster.json from the cluster's "
                          "metadata server folder (a uuid such as make-mds writes)")
    return text


def check_chunk_size(size: int) -> int:
    if not MIN_CHUNK_SIZE <= size <= MAX_CHUNK_SIZE or size % BLOCK_SIZE:
        raise ConfigError(
            f"bad chunk size {size}: must be a multiple of 64 KiB between 1 MiB and 1 GiB"
        )
    return size


def parse_size(text: str) -> int:
    """``256M``, ``4MiB``, ``1G``, ``65536`` -> bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise ConfigError(f"bad size {text!r}: expected a number with an optional K, M, G or T suffix")
    return int(match.group(1)) << (10 * " KMGT".index(match.group(2).upper() or " "))


@dataclass(slots=True, frozen=True)
class ClusterInfo:
    name: str
    uuid: str
    chunk_size: int
    #: Every connection of the cluster runs over TLS, with certificates of the cluster CA (common/certs.py).
    #: Cluster-wide: a node without TLS cannot talk to one with it.
    tls: bool = False


@dataclass(slots=True, frozen=True)
class NodeConfig:
    """The ``node.json`` of one daemon's directory."""

    role: str  # "mds" or "cs"
    cluster: ClusterInfo
    addr: str
    node_id: int = 0  # MDS: its id in the group; CS: 0 until the master assigns one
    host: str = ""
    mds: tuple[str, ...] = field(default_factory=tuple)
    #: CS: seconds between heartbeats; at most a quarter of its lease from the master (cs/mds_link.py).
    heartbeat_interval: float = 1.0
    #: MDS only: the other members known when this one was made, as (id, address).
    peers: tuple[tuple[int, str], ...] = field(default_factory=tuple)
    #: MDS only: the founding member starts a new group; others join a running one.
    bootstrap: bool = False
    #: MDS only: this member has held Raft state (a term, a vote) once.  Started without any, its folder
    #: was emptied but for this file: it refuses to start (it would have forgotten what it acknowledged).
    joined: bool = False
    #: HOST:PORT of the HTTP listener for Prometheus ``/metrics`` (and, on an MDS, the dashboard);
    #: empty or "0" disables it.
    metrics_addr: str = ""
    #: MDS only: reach a peer listed at the first address through the second instead (a tunnel, a NAT,
    #: or a test's fault-injection proxy).  Only this node's own Raft traffic is routed; clients are
    #: still told the listed address.
    peer_routes: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    #: CS only: where it is, ``ROOM.ROW.RACK`` (failure domains above the host), and its tier (0-3).
    location: str = ""
    tier: int = 0
    #: The daemon's log (``daemon.log`` in a background daemon) rotates when it would pass this many
    #: bytes, keeping this many older files (``daemon.log.1`` is the newest of them).
    log_max_size: int = DEFAULT_LOG_MAX_SIZE
    log_backups: int = DEFAULT_LOG_BACKUPS

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["mds"] = list(self.mds)
        data["peers"] = {str(i): a for i, a in self.peers}
        data["peer_routes"] = dict(self.peer_routes)
        return data


def _require(data: dict[str, Any], key: str, kind: type, where: Path) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ConfigError(f"{where}: option {key!r} is missing or not a {kind.__name__}")
    return value


def _check_addr(value: str, option: str, where: Path) -> str:
    try:
        parse_addr(value)
    except InvalidArgument as exc:
        raise ConfigError(f"{where}: option {option!r}: {exc}") from None
    return value


_LOCATION_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}(\.[A-Za-z0-9_-]{1,32}){0,2}$")


def check_location(value: str) -> str:
    """``ROOM``, ``ROOM.ROW`` or ``ROOM.ROW.RACK`` (or empty: unknown)."""
    if value and not _LOCATION_RE.fullmatch(value):
        raise ConfigError(
            f"bad location {value!r}: use ROOM.ROW.RACK, each part 1-32 letters, digits, '_' or '-'")
    return value


def check_tier(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TIER:
        raise ConfigError(f"bad tier {value!r}: must be a whole number from 0 to {MAX_TIER}")
    return value


def check_log_max_size(value: Any) -> int:
    """``log_max_size``: bytes, as a number or a size such as ``"64M"``; 4 KiB to 1 TiB."""
    if isinstance(value, str):
        try:
            value = parse_size(value)
        except ConfigError as exc:
            raise ConfigError(f"option 'log_max_size': {exc}") from None
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_LOG_MAX_SIZE <= value <= MAX_LOG_MAX_SIZE:
        raise ConfigError(f"option 'log_max_size' must be a size from 4K to 1T (bytes, or like \"64M\"), "
                          f"not {value!r}")
    return value


def check_log_backups(value: Any) -> int:
    """``log_backups``: rotated files kept, 1 to 1000 (with 0 the standard handler would never rotate)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LOG_BACKUPS:
        raise ConfigError(f"option 'log_backups' must be a whole number from 1 to {MAX_LOG_BACKUPS}, not {value!r}")
    return value


def strip_comments(text: str) -> str:
    """Drop whole-line ``#`` comments, so a commented sample (etc/*.conf-sample) is a valid node.json."""
    return "\n".join("" if line.lstrip().startswith("#") else line for line in text.splitlines())


def load_node(directory: Path) -> tuple[NodeConfig, bytes]:
    path = directory / NODE_FILE
    if not path.exists():
        raise ConfigError(
            f"{directory} is not a ChunkFS node directory (no {NODE_FILE}): create it with make-mds or make-cs"
        )
    try:
        data = json.loads(strip_comments(path.read_text()))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    cdata = _require(data, "cluster", dict, path)
    tls = cdata.get("tls", False)
    if not isinstance(tls, bool):
        raise ConfigError(f"{path}: option 'cluster.tls' must be true or false")
    cluster = ClusterInfo(
        check_cluster_name(_require(cdata, "name", str, path)),
        check_cluster_id(_require(cdata, "uuid", str, path)),
        check_chunk_size(_require(cdata, "chunk_size", int, path)),
        tls,
    )
    role = _require(data, "role", str, path)
    if role not in ("mds", "cs"):
        raise ConfigError(f"{path}: option 'role' must be 'mds' or 'cs'")
    addr = _check_addr(_require(data, "addr", str, path), "addr", path)
    interval = data.get("heartbeat_interval", 1.0)
    if not isinstance(interval, int | float) or not 0.05 <= interval <= 60:
        raise ConfigError(f"{path}: option 'heartbeat_interval' must be a number of seconds in 0.05-60")
    mds_list = data.get("mds", [])
    if not isinstance(mds_list, list) or not all(isinstance(a, str) for a in mds_list):
        raise ConfigError(f"{path}: option 'mds' must be a list of HOST:PORT addresses")
    mds = tuple(_check_addr(a, "mds", path) for a in mds_list)
    node_id = data.get("node_id", 0)
    if not isinstance(node_id, int) or isinstance(node_id, bool) or node_id < 0:
        raise ConfigError(f"{path}: option 'node_id' must be a non-negative integer")
    host = data.get("host", "")
    if not isinstance(host, str):
        raise ConfigError(f"{path}: option 'host' must be a string")
    peers_map = data.get("peers", {})
    if not isinstance(peers_map, dict) or not all(
        isinstance(k, str) and k.isdigit() and isinstance(v, str) for k, v in peers_map.items()
    ):
        raise ConfigError(f"{path}: option 'peers' must map MDS ids to HOST:PORT addresses")
    peers = tuple(sorted((int(k), _check_addr(v, "peers", path)) for k, v in peers_map.items()))
    bootstrap, joined = data.get("bootstrap", False), data.get("joined", False)
    if not isinstance(bootstrap, bool) or not isinstance(joined, bool):
        raise ConfigError(f"{path}: options 'bootstrap' and 'joined' must be true or false")
    metrics_addr = data.get("metrics_addr", "")
    if not isinstance(metrics_addr, str):
        raise ConfigError(f"{path}: option 'metrics_addr' must be a HOST:PORT string, or empty to disable metrics")
    if metrics_addr in ("", "0"):
        metrics_addr = ""
    else:
        _check_addr(metrics_addr, "metrics_addr", path)
    routes = data.get("peer_routes", {})
    if not isinstance(routes, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in routes.items()):
        raise ConfigError(f"{path}: option 'peer_routes' must map HOST:PORT addresses to HOST:PORT addresses")
    peer_routes = tuple(sorted(
        (_check_addr(k, "peer_routes", path), _check_addr(v, "peer_routes", path)) for k, v in routes.items()))
    try:
        location = check_location(data.get("location", ""))
        tier = check_tier(data.get("tier", 0))
    except (ConfigError, TypeError) as exc:
        raise ConfigError(f"{path}: option 'location' or 'tier': {exc}") from None
    try:
        log_max_size = check_log_max_size(data.get("log_max_size", DEFAULT_LOG_MAX_SIZE))
        log_backups = check_log_backups(data.get("log_backups", DEFAULT_LOG_BACKUPS))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    node = NodeConfig(
        role=role, cluster=cluster, addr=addr, node_id=node_id, host=host, mds=mds,
        heartbeat_interval=float(interval), peers=peers, bootstrap=bootstrap, joined=joined, metrics_addr=metrics_addr,
        peer_routes=peer_routes, location=location, tier=tier, log_max_size=log_max_size, log_backups=log_backups,
    )
    return node, read_secret(directory / SECRET_FILE)


def save_node(directory: Path, node: NodeConfig, secret: bytes) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    write_secret(directory / SECRET_FILE, secret)
    save_node_file(directory, node)


def save_node_file(directory: Path, node: NodeConfig) -> None:
    """Rewrite ``node.json`` alone: a running daemon never writes its ``secret`` (a rotation may have replaced it)."""
    write_file_durably(directory / NODE_FILE, json.dumps(node.to_json(), indent=2).encode())


def read_secret(path: Path) -> bytes:
    try:
        text = path.read_text().strip()
        secret = bytes.fromhex(text)
    except FileNotFoundError:
        raise ConfigError(f"{path}: the cluster secret is missing") from None
    except ValueError:
        raise ConfigError(f"{path}: unreadable cluster secret (not hexadecimal): copy it again from a host where "
                          "the cluster's commands work") from None
    except OSError as exc:
        raise ConfigError(f"{path}: unreadable cluster secret: {exc.strerror or exc}") from None
    if len(secret) < 16:
        raise ConfigError(f"{path}: the cluster secret is too short")
    return secret


def write_secret(path: Path, secret: bytes) -> None:
    write_file_durably(path, secret.hex().encode() + b"\n", mode=0o600)


# -- client configuration -----------------------------------------------------


@dataclass(slots=True, frozen=True)
class ClientConfig:
    cluster: ClusterInfo
    mds: tuple[str, ...]
    secret: bytes
    #: The folder it was read from (None: made in memory): where its TLS certificate lives.  Not part
    #: of the configuration's value (two copies of one configuration are equal wherever they are).
    directory: Path | None = field(default=None, compare=False)


def cluster_conf_path(name: str) -> Path:
    return conf_dir() / "clusters" / check_cluster_name(name)


def save_client_config(cfg: ClientConfig) -> Path:
    path = cluster_conf_path(cfg.cluster.name)
    path.mkdir(parents=True, exist_ok=True)
    write_secret(path / SECRET_FILE, cfg.secret)
    write_file_durably(path / "cluster.json", json.dumps(asdict(cfg.cluster), indent=2).encode())  # with "tls"
    write_file_durably(path / "mds.list", "".join(f"{a}\n" for a in cfg.mds).encode())
    return path


def load_client_config(name: str) -> ClientConfig:
    path = cluster_conf_path(name)
    if not (path / "cluster.json").exists():
        if path.is_dir():
            raise ConfigError(f"{path}: broken client configuration (no cluster.json): copy the folder again from a "
                              "host where the cluster's commands work")
        raise ConfigError(
            f"unknown cluster {name!r}: no configuration in {path} "
            "(create it with `chunkfs -c NAME make-mds -I ...` or `chunkfs local up`, or set CHUNKFS_CONF_DIR)"
        )
    try:
        data = json.loads((path / "cluster.json").read_text())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        tls = data.get("tls", False)
        if not isinstance(tls, bool):
            raise ValueError("'tls' must be true or false")
        if not isinstance(data["name"], str) or not isinstance(data["uuid"], str):
            raise ValueError("'name' and 'uuid' must be strings")
        if data["name"] != name:
            raise ValueError(f"it is the configuration of cluster {data['name']!r}, not {name!r}")
        chunk_size = data["chunk_size"]
        if not isinstance(chunk_size, int):
            raise ValueError("'chunk_size' must be a whole number")
        cluster = ClusterInfo(data["name"], check_cluster_id(data["uuid"]), check_chunk_size(chunk_size), tls)
        mds = tuple(line.strip() for line in (path / "mds.list").read_text().splitlines() if line.strip())
    except (OSError, ValueError, KeyError, TypeError, ConfigError) as exc:
        what = f"{Path(exc.filename).name}: {exc.strerror}" if isinstance(exc, OSError) and exc.filename else \
            f"cluster.json: {'no ' if isinstance(exc, KeyError) else ''}{exc}"
        raise ConfigError(f"{path}: broken client configuration ({what}): copy the folder again from a host "
                          "where the cluster's commands work, or mend the file") from None
    for a in mds:
        _check_addr(a, "mds.list", path)
    if not mds:
        raise ConfigError(f"{path}/mds.list lists no metadata server")
    return ClientConfig(cluster, mds, read_secret(path / SECRET_FILE), path)
