"""Shared pytest options."""

from __future__ import annotations

import os

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    # The Raft simulator runs a bounded number of seeds in CI; soak runs ask for more.
    parser.addoption("--seeds", type=int, default=None, help="number of simulator seeds to run")
    parser.addoption("--seed-start", type=int, default=0, help="first simulator seed (replay a failure)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `slow` (long soaks) run only with CHUNKFS_SLOW=1; CI runs their bounded versions."""
    if os.environ.get("CHUNKFS_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow soak test: set CHUNKFS_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
