"""``chunkfs mount -o``: our options' values are checked at the mount (an operator probe: typos went through)."""

from __future__ import annotations

import pytest

from chunkfs.client.fuse_ops import OPTION_RANGES, parse_options
from chunkfs.common.errors import ConfigError


@pytest.mark.parametrize("option", ["max_tasks=0", "readahead_kb=99999999999999999999", "attr_timeout=1e999",
                                    "entry_timeout=nan", "cache_timeout=-1", "master_wait=0",
                                    "max_background=70000", "readahead_kb=x"])
def test_a_value_out_of_range_is_refused_naming_the_option(option: str) -> None:
    key = option.split("=")[0]
    with pytest.raises(ConfigError, match=f"mount option {key}"):
        parse_options([option])


def test_the_values_at_each_end_of_a_range_are_taken_and_the_rest_go_to_fuse() -> None:
    for key, (low, high, _unit) in OPTION_RANGES.items():
        for value in (high, low if key != "master_wait" else 0.5):
            assert getattr(parse_options([f"{key}={value}"]), key) == value
    assert parse_options(["ro,max_tasks=8"]).fuse == {"ro"}
