"""Configuration: sizes, names, node directories, client configuration."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from chunkfs.common.config import (
    NODE_FILE,
    SECRET_FILE,
    ClientConfig,
    ClusterInfo,
    NodeConfig,
    check_chunk_size,
    check_cluster_name,
    cluster_conf_path,
    load_client_config,
    load_node,
    parse_size,
    read_secret,
    save_client_config,
    save_node,
)
from chunkfs.common.errors import ChunkFSError, ConfigError

SECRET = bytes(range(32))
CLUSTER = ClusterInfo("c1", "0123-uuid", 4 << 20)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("65536", 65536),
        ("1K", 1024),
        ("1k", 1024),
        ("4KiB", 4096),
        ("4kb", 4096),
        ("256M", 256 << 20),
        ("4MiB", 4 << 20),
        ("4 MiB", 4 << 20),
        ("1G", 1 << 30),
        ("2GB", 2 << 30),
        ("3T", 3 << 40),
        (" 7m ", 7 << 20),
        ("10B", 10),
    ],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", " ", "M", "-1", "1.5G", "1X", "1P", "1 M M", "0x10", "1e3", "one"])
def test_parse_size_bad(text: str) -> None:
    with pytest.raises(ConfigError, match="bad size"):
        parse_size(text)


@pytest.mark.parametrize("name", ["a", "c1", "my-cluster.prod_1", "0", "A" * 63])
def test_cluster_name_ok(name: str) -> None:
    assert check_cluster_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "-a", ".a", "_a", "a b", "a/b", "../x", "A" * 64, "é", "a\0", "a:b"]
)
def test_cluster_name_bad(name: str) -> None:
    with pytest.raises(ConfigError, match="cluster name"):
        check_cluster_name(name)


def test_cluster_name_with_trailing_newline_rejected() -> None:
    with pytest.raises(ConfigError):
        check_cluster_name("c1\n")


@pytest.mark.parametrize("size", [1 << 20, 4 << 20, (1 << 20) + (64 << 10), 256 << 20, 1 << 30])
def test_chunk_size_ok(size: int) -> None:
    assert check_chunk_size(size) == size


@pytest.mark.parametrize("size", [0, -1, (1 << 20) - (64 << 10), (1 << 20) + 1, (1 << 30) + (64 << 10), 2 << 30])
def test_chunk_size_bad(size: int) -> None:
    with pytest.raises(ConfigError, match="chunk size"):
        check_chunk_size(size)


# -- node directories -------------------------------------------------------------


def node(**overrides: Any) -> NodeConfig:
    args: dict[str, Any] = {
        "role": "cs", "cluster": CLUSTER, "addr": "127.0.0.1:9700", "node_id": 3, "host": "h1",
        "mds": ("127.0.0.1:9600", "[::1]:9601"), "heartbeat_interval": 0.5,
    }
    args.update(overrides)
    return NodeConfig(**args)


def test_node_round_trip(tmp_path: Path) -> None:
    n = node()
    save_node(tmp_path / "cs1", n, SECRET)
    loaded, secret = load_node(tmp_path / "cs1")
    assert loaded == n
    assert secret == SECRET
    assert stat.S_IMODE((tmp_path / "cs1" / SECRET_FILE).stat().st_mode) == 0o600


def test_node_round_trip_defaults(tmp_path: Path) -> None:
    n = NodeConfig(role="mds", cluster=CLUSTER, addr="127.0.0.1:1")
    save_node(tmp_path, n, SECRET)
    assert load_node(tmp_path) == (n, SECRET)


def test_missing_node_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=NODE_FILE):
        load_node(tmp_path)


def write_node_json(directory: Path, data: Any) -> None:
    save_node(directory, node(), SECRET)
    (directory / NODE_FILE).write_text(json.dumps(data))


def good_json() -> dict[str, Any]:
    return node().to_json()


def with_(path: list[str], value: Any) -> dict[str, Any]:
    data = good_json()
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("data", "option"),
    [
        (with_(["cluster"], KeyError), "cluster"),
        (with_(["cluster"], "c1"), "cluster"),
        (with_(["cluster", "name"], 5), "name"),
        (with_(["cluster", "name"], "bad name"), "cluster name"),
        (with_(["cluster", "uuid"], KeyError), "uuid"),
        (with_(["cluster", "chunk_size"], "4M"), "chunk_size"),
        (with_(["cluster", "chunk_size"], True), "chunk_size"),
        (with_(["cluster", "chunk_size"], 12345), "chunk size"),
        (with_(["role"], "client"), "role"),
        (with_(["role"], KeyError), "role"),
        (with_(["addr"], 9600), "addr"),
        (with_(["heartbeat_interval"], 0), "heartbeat_interval"),
        (with_(["heartbeat_interval"], 61), "heartbeat_interval"),
        (with_(["heartbeat_interval"], "1"), "heartbeat_interval"),
    ],
)
def test_bad_node_values_name_the_option(tmp_path: Path, data: dict[str, Any], option: str) -> None:
    write_node_json(tmp_path, data)
    with pytest.raises(ConfigError, match=option):
        load_node(tmp_path)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("log_max_size", 0),
        ("log_max_size", 4095),
        ("log_max_size", "1K"),
        ("log_max_size", "2T"),
        ("log_max_size", "huge"),
        ("log_max_size", True),
        ("log_max_size", 1.5e6),
        ("log_max_size", None),
        ("log_backups", 0),
        ("log_backups", -1),
        ("log_backups", 1001),
        ("log_backups", "5"),
        ("log_backups", False),
    ],
)
def test_bad_log_rotation_values_name_the_option(tmp_path: Path, key: str, value: Any) -> None:
    write_node_json(tmp_path, with_([key], value))
    with pytest.raises(ConfigError, match=f"{NODE_FILE}: option '{key}'"):
        load_node(tmp_path)


@pytest.mark.parametrize(
    ("data", "size", "backups"),
    [
        ({}, 64 << 20, 5),
        ({"log_max_size": "1M", "log_backups": 2}, 1 << 20, 2),
        ({"log_max_size": 4096, "log_backups": 1000}, 4096, 1000),
        ({"log_max_size": "1T"}, 1 << 40, 5),
    ],
)
def test_log_rotation_options(tmp_path: Path, data: dict[str, Any], size: int, backups: int) -> None:
    content = good_json()
    del content["log_max_size"], content["log_backups"]  # a node.json made before the options existed
    write_node_json(tmp_path, content | data)
    loaded, _ = load_node(tmp_path)
    assert (loaded.log_max_size, loaded.log_backups) == (size, backups)


@pytest.mark.parametrize("text", ["not json", "[1, 2]", "", "null"])
def test_unreadable_node_json(tmp_path: Path, text: str) -> None:
    save_node(tmp_path, node(), SECRET)
    (tmp_path / NODE_FILE).write_text(text)
    with pytest.raises(ConfigError, match=NODE_FILE):
        load_node(tmp_path)


@pytest.mark.parametrize(("key", "value"), [("addr", "nohost"), ("addr", "h:99999"), ("mds", ["h:x"])])
def test_bad_addresses_are_refused(tmp_path: Path, key: str, value: Any) -> None:
    write_node_json(tmp_path, with_([key], value))
    with pytest.raises(ChunkFSError, match="address"):
        load_node(tmp_path)


@pytest.mark.parametrize(
    ("key", "value"),
    [("node_id", "three"), ("node_id", [1]), ("mds", 5), ("mds", "127.0.0.1:9600"), ("addr", "nohost")],
)
def test_bad_node_id_or_mds_is_config_error(tmp_path: Path, key: str, value: Any) -> None:
    write_node_json(tmp_path, with_([key], value))
    with pytest.raises(ConfigError, match=key):
        load_node(tmp_path)


@pytest.mark.parametrize(("content", "match"), [(None, "missing"), ("zz", "unreadable"), ("00" * 15, "too short")])
def test_bad_secret(tmp_path: Path, content: str | None, match: str) -> None:
    save_node(tmp_path, node(), SECRET)
    if content is None:
        (tmp_path / SECRET_FILE).unlink()
    else:
        (tmp_path / SECRET_FILE).write_text(content)
    with pytest.raises(ConfigError, match=match):
        load_node(tmp_path)
    with pytest.raises(ConfigError, match=SECRET_FILE):
        read_secret(tmp_path / SECRET_FILE)


# -- client configuration -------------------------------------------------------------


@pytest.fixture
def conf_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CHUNKFS_CONF_DIR", str(tmp_path))
    return tmp_path


def test_client_config_round_trip(conf_dir: Path) -> None:
    cfg = ClientConfig(CLUSTER, ("127.0.0.1:9600", "127.0.0.1:9601"), SECRET)
    path = save_client_config(cfg)
    assert path == conf_dir / "clusters" / "c1"
    assert (path / "mds.list").read_text() == "127.0.0.1:9600\n127.0.0.1:9601\n"
    assert load_client_config("c1") == cfg


def test_unknown_cluster_message(conf_dir: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_client_config("nosuch")
    msg = str(info.value)
    assert "unknown cluster 'nosuch'" in msg
    assert str(conf_dir / "clusters" / "nosuch") in msg
    assert "CHUNKFS_CONF_DIR" in msg


def test_client_bad_cluster_name(conf_dir: Path) -> None:
    with pytest.raises(ConfigError, match="cluster name"):
        load_client_config("../etc")
    with pytest.raises(ConfigError, match="cluster name"):
        cluster_conf_path("a/b")


@pytest.mark.parametrize(
    ("cluster_json", "mds_list", "match"),
    [
        ("{", "h:1\n", "broken"),
        ('{"name": "c1"}', "h:1\n", "broken"),
        ('{"name": "c1", "uuid": "u", "chunk_size": 5}', "h:1\n", "chunk size"),
        ('{"name": "c1", "uuid": "u", "chunk_size": 1048576}', "\n\n", "no metadata server"),
        ('{"name": "c1", "uuid": "u", "chunk_size": 1048576}', None, "broken"),
        # Valid JSON of another shape, or fields of the wrong type: a traceback from every command (a probe).
        ("[1, 2]", "h:1\n", "cluster.json: not a JSON object"),
        ("null", "h:1\n", "cluster.json: not a JSON object"),
        ('{"name": 5, "uuid": "u", "chunk_size": 1048576}', "h:1\n", "must be strings"),
        ('{"name": "other", "uuid": "u", "chunk_size": 1048576}', "h:1\n", "of cluster 'other', not 'c1'"),
        ('{"name": "c1", "uuid": "u", "chunk_size": -5}', "h:1\n", "c1: broken .*bad chunk size -5"),
        ('{"name": "c1", "uuid": "u", "chunk_size": "1M"}', "h:1\n", "whole number"),
        # Sent in every HELLO: a long or odd one is refused here, not as an oversized frame (a probe).
        ('{"name": "c1", "uuid": "' + "a" * 65 + '", "chunk_size": 1048576}', "h:1\n", "bad cluster id"),
        ('{"name": "c1", "uuid": "a b", "chunk_size": 1048576}', "h:1\n", "bad cluster id"),
    ],
)
def test_client_broken_config(conf_dir: Path, cluster_json: str, mds_list: str | None, match: str) -> None:
    save_client_config(ClientConfig(CLUSTER, ("127.0.0.1:9600",), SECRET))
    path = conf_dir / "clusters" / "c1"
    (path / "cluster.json").write_text(cluster_json)
    if mds_list is None:
        (path / "mds.list").unlink()
    else:
        (path / "mds.list").write_text(mds_list)
    with pytest.raises(ConfigError, match=match):
        load_client_config("c1")


def test_a_configuration_folder_without_its_cluster_json_is_called_broken_not_unknown(conf_dir: Path) -> None:
    path = save_client_config(ClientConfig(CLUSTER, ("127.0.0.1:9600",), SECRET))
    (path / "cluster.json").unlink()
    with pytest.raises(ConfigError, match="broken client configuration .no cluster.json"):
        load_client_config("c1")


def test_a_secret_that_is_not_hexadecimal_is_said_in_words(conf_dir: Path) -> None:
    path = save_client_config(ClientConfig(CLUSTER, ("127.0.0.1:9600",), SECRET))
    (path / "secret").write_text("not hex at all")
    with pytest.raises(ConfigError, match=r"unreadable cluster secret \(not hexadecimal\): copy it again"):
        load_client_config("c1")
