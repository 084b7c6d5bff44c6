"""`crc32c_replaced`: a block's CRC after some of its bytes are replaced, from its old CRC."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chunkfs.common.checksum import crc32c, crc32c_replaced


@settings(max_examples=300, deadline=None)
@given(
    block=st.binary(min_size=1, max_size=3000),
    data=st.data(),
)
def test_the_crc_of_a_block_with_bytes_replaced_is_its_crc_computed_afresh(block: bytes, data: st.DataObject) -> None:
    offset = data.draw(st.integers(0, len(block) - 1))
    new = data.draw(st.binary(min_size=1, max_size=len(block) - offset))
    after = len(block) - offset - len(new)
    changed = block[:offset] + new + block[offset + len(new) :]
    assert crc32c_replaced(crc32c(block), block[offset : offset + len(new)], new, after) == crc32c(changed)


@settings(max_examples=100, deadline=None)
@given(block=st.binary(min_size=64, max_size=70_000), error=st.integers(1, 2**32 - 1), data=st.data())
def test_a_wrong_crc_stays_wrong_by_the_same_difference(block: bytes, error: int, data: st.DataObject) -> None:
    """The replaced bytes' difference is carried: a block that did not match its CRC (corrupt) still does not."""
    offset = data.draw(st.integers(0, len(block) - 1))
    new = data.draw(st.binary(min_size=1, max_size=min(4096, len(block) - offset)))
    after = len(block) - offset - len(new)
    changed = block[:offset] + new + block[offset + len(new) :]
    got = crc32c_replaced(crc32c(block) ^ error, block[offset : offset + len(new)], new, after)
    assert got ^ crc32c(changed) == error


def test_a_replacement_must_keep_the_length() -> None:
    with pytest.raises(ValueError, match="replaced 3 bytes with 2"):
        crc32c_replaced(0, b"abc", b"ab", 0)
