"""A cluster's making that fails part way leaves nothing behind, so the same command can run again (an
operator probe: with a read-only configuration folder, `local up` failed after making the first MDS's
folder, and every later try refused that folder as "already holds a MDS", without saying to remove it)."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import pytest

from chunkfs.cli import nodes
from chunkfs.common.config import NODE_FILE, cluster_conf_path


def _free_addr() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("there", [False, True], ids=["new-folder", "empty-folder"])
def test_a_making_that_failed_writing_the_client_configuration_can_be_run_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, there: bool) -> None:
    monkeypatch.setenv("CHUNKFS_CONF_DIR", str(tmp_path / "conf"))
    directory = tmp_path / "mds1"
    if there:
        directory.mkdir()

    def read_only(*args: object, **kwargs: object) -> Path:
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "conf" / "clusters"))

    with monkeypatch.context() as m:
        m.setattr(nodes, "save_client_config", read_only)
        with pytest.raises(OSError, match="Read-only"):
            nodes.make_mds("undo", directory, _free_addr(), 1 << 20, init=True)
    assert directory.exists() == there and not (there and any(directory.iterdir()))
    assert not cluster_conf_path("undo").exists()
    node = nodes.make_mds("undo", directory, _free_addr(), 1 << 20, init=True)  # the same command, again
    assert node.node_id == 1 and (directory / NODE_FILE).is_file()
    assert (cluster_conf_path("undo") / "cluster.json").is_file()
