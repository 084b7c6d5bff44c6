"""Shared pytest options."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    # The Raft simulator runs a bounded number of seeds in CI; soak runs ask for more.
    parser.addoption("--seeds", type=int, default=None, help="number of simulator seeds to run")
    parser.addoption("--seed-start", type=int, default=0, help="first simulator seed (replay a failure)")
