"""Names in the client library: too long is ENAMETOOLONG before anything is sent; text and bytes name one file."""

from __future__ import annotations

import errno

import pytest

from chunkfs.client.client import split_path
from chunkfs.common.errors import InvalidArgument, NameTooLong
from chunkfs.common.names import check_name, shown, to_bytes, to_text


@pytest.mark.parametrize("path", ["/" + "x" * 256, "/a/" + "é" * 128 + "/b", "/" + "y" * 256 + "/z"])
def test_a_component_over_255_bytes_is_too_long(path: str) -> None:
    with pytest.raises(NameTooLong) as info:
        split_path(path)
    assert info.value.errno == errno.ENAMETOOLONG


def test_longest_name_and_paths_over_255_bytes_are_fine() -> None:
    assert split_path("/" + "d" * 200 + "/" + "f" * 255) == ("/" + "d" * 200, "f" * 255)


@pytest.mark.parametrize("raw", [b"caf\xe9", b"\xff\xfe", "日本語".encode(), b"plain"])
def test_text_and_bytes_round_trip(raw: bytes) -> None:
    assert to_bytes(to_text(raw)) == raw
    check_name(raw)
    check_name(to_text(raw))
    assert "\ufffd" in shown(b"caf\xe9")


@pytest.mark.parametrize("bad", [b"", b".", b"..", b"a/b", b"a\0b"])
def test_bad_names(bad: bytes) -> None:
    with pytest.raises(InvalidArgument):
        check_name(bad)
