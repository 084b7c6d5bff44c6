"""Shared pytest options."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from chunkfs.common.daemon import PORTS_ENV, port_range

TESTS = Path(__file__).resolve().parent


def pytest_addoption(parser: pytest.Parser) -> None:
    # The Raft simulator runs a bounded number of seeds in CI; soak runs ask for more.
    parser.addoption("--seeds", type=int, default=None, help="number of simulator seeds to run")
    parser.addoption("--seed-start", type=int, default=0, help="first simulator seed (replay a failure)")


def pytest_configure(config: pytest.Config) -> None:
    """Each pytest-xdist worker picks its daemons' ports from its own slice of the range.

    A cluster's ports are chosen when it is made and bound as each daemon starts, a second or
    more later: two workers sharing one range could pick the same port in that window.
    """
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not worker.startswith("gw") or not count.isdigit():
        return
    low, high = port_range()
    span = (high - low + 1) // int(count)
    first = low + int(worker[2:]) * span
    os.environ[PORTS_ENV] = f"{first}-{first + span - 1}"


#: Test folders whose tests start real processes (and mounts): the `cluster` tier.
CLUSTER_TIERS = ("cluster", "mount")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tiers by folder (`-m "not cluster"`: the fast tier); slow soaks only with CHUNKFS_SLOW=1.

    By folder here because ``pytestmark`` in a conftest.py marks nothing.
    """
    for item in items:
        if Path(str(item.path)).relative_to(TESTS).parts[0] in CLUSTER_TIERS:
            item.add_marker(pytest.mark.cluster)
    if os.environ.get("CHUNKFS_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow soak test: set CHUNKFS_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
