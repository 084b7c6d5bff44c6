"""A local cluster's list of its servers (`local.json`), damaged: one line that says what to do, no traceback
(an operator probe: `local up`, `local status` and `local down` each ended in a JSONDecodeError, TypeError
or KeyError traceback)."""

from __future__ import annotations

from pathlib import Path

import pytest

from chunkfs.cli.local_cluster import STATE_FILE, LocalCluster, Process
from chunkfs.common.config import ConfigError


@pytest.mark.parametrize("text", ["", "{bad", "[1]", "{}", '{"name": "c", "processes": [1]}',
                                  '{"name": 5, "processes": []}',
                                  '{"name": "c", "processes": [{"role": "mds", "id": "1", "dir": "d", "addr": "a"}]}'])
def test_a_damaged_list_of_servers_is_refused_in_one_line_that_says_what_to_do(tmp_path: Path, text: str) -> None:
    (tmp_path / STATE_FILE).write_text(text)
    with pytest.raises(ConfigError) as refused:
        LocalCluster.load(tmp_path)
    message = str(refused.value)
    assert f"{tmp_path / STATE_FILE} is damaged" in message and "mend the file" in message, message
    assert "\n" not in message


def test_the_list_of_servers_saved_is_read_back(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, "c")
    cluster.processes = [Process("mds", 1, str(tmp_path / "mds1"), "127.0.0.1:1")]
    cluster.save()
    loaded = LocalCluster.load(tmp_path)
    assert (loaded.name, loaded.processes) == ("c", cluster.processes)
