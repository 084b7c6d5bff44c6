"""Cutting a file byte range into per-chunk, bounded pieces."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chunkfs.client.chunk_io import split
from chunkfs.protocol.frame import MAX_IO_SIZE, MAX_PAYLOAD_LEN

MiB = 1 << 20


def test_examples() -> None:
    assert split(0, 0, MiB) == []
    assert split(10, 0, MiB) == []
    assert split(0, 100, MiB) == [(0, 0, 100, 0)]
    assert split(MiB - 10, 20, MiB) == [(0, MiB - 10, 10, 0), (1, 0, 10, 10)]
    assert split(3 * MiB, MiB, MiB) == [(3, 0, MiB, 0)]
    big = 256 * MiB
    assert split(0, 10 * MiB, big) == [
        (0, 0, 4 * MiB, 0),
        (0, 4 * MiB, 4 * MiB, 4 * MiB),
        (0, 8 * MiB, 2 * MiB, 8 * MiB),
    ]


def test_max_io_fits_a_frame() -> None:
    assert MAX_IO_SIZE <= MAX_PAYLOAD_LEN


@given(
    offset=st.integers(0, 2**44),
    length=st.integers(0, 40 * MiB),
    chunk_size=st.sampled_from([MiB, 2 * MiB, 3 * MiB + 64 * 1024, 4 * MiB, 64 * MiB, 256 * MiB, 1 << 30]),
)
def test_pieces_cover_range_exactly(offset: int, length: int, chunk_size: int) -> None:
    pieces = split(offset, length, chunk_size)
    pos = offset
    buf = 0
    for index, in_chunk, size, buf_off in pieces:
        assert 0 < size <= MAX_IO_SIZE
        assert 0 <= in_chunk < chunk_size
        assert in_chunk + size <= chunk_size, "piece crosses a chunk boundary"
        assert index * chunk_size + in_chunk == pos, "gap or overlap"
        assert buf_off == buf
        pos += size
        buf += size
    assert pos == offset + length
    assert buf == length
    # No more pieces than needed: a piece is only cut at a boundary or at the size limit.
    for (i1, o1, s1, _), (i2, _o2, _s2, _) in zip(pieces, pieces[1:], strict=False):
        assert o1 + s1 == chunk_size or s1 == MAX_IO_SIZE
        assert i2 in (i1, i1 + 1)


@pytest.mark.parametrize("length", [-1, -MiB])
def test_negative_length_gives_nothing(length: int) -> None:
    assert split(0, length, MiB) == []
