"""The frame: fixed prefix, msgpack header, limits checked before allocation."""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from chunkfs.common.errors import ProtocolError
from chunkfs.protocol import frame
from chunkfs.protocol.frame import (
    MAGIC,
    MAX_HEADER_LEN,
    MAX_PAYLOAD_LEN,
    PREFIX,
    PREFIX_SIZE,
    PROTOCOL_VERSION,
    FramePrefix,
    Kind,
    decode_header,
    encode_header,
    pack_prefix,
    unpack_prefix,
)


def raw_prefix(
    magic: bytes = MAGIC,
    version: int = PROTOCOL_VERSION,
    kind: int = 0,
    mtype: int = 11,
    rid: int = 7,
    hlen: int = 10,
    plen: int = 0,
) -> bytes:
    return PREFIX.pack(magic, version, kind, mtype, rid, hlen, plen)


def test_prefix_layout_is_24_bytes_network_order() -> None:
    assert PREFIX_SIZE == 24
    data = pack_prefix(Kind.RESPONSE, 0x0102, 0x0A0B0C0D0E0F1011, 0x11223344, 0x55667788)
    assert data[:4] == b"CHFS"
    assert data[4] == PROTOCOL_VERSION
    assert data[5] == 1
    assert data[6:8] == b"\x01\x02"
    assert data[8:16] == bytes.fromhex("0a0b0c0d0e0f1011")


@given(
    kind=st.sampled_from(list(Kind)),
    mtype=st.integers(0, 0xFFFF),
    rid=st.integers(0, 2**64 - 1),
    hlen=st.integers(0, MAX_HEADER_LEN),
    plen=st.integers(0, MAX_PAYLOAD_LEN),
)
def test_prefix_round_trip(kind: Kind, mtype: int, rid: int, hlen: int, plen: int) -> None:
    data = pack_prefix(kind, mtype, rid, hlen, plen)
    assert len(data) == PREFIX_SIZE
    parsed = unpack_prefix(data)
    assert parsed == FramePrefix(kind, mtype, rid, hlen, plen)
    assert isinstance(parsed.kind, Kind)


def test_limits_are_inclusive_and_boundaries_exact() -> None:
    assert unpack_prefix(raw_prefix(hlen=MAX_HEADER_LEN)).header_len == MAX_HEADER_LEN
    assert unpack_prefix(raw_prefix(plen=MAX_PAYLOAD_LEN)).payload_len == MAX_PAYLOAD_LEN
    with pytest.raises(ProtocolError, match="header"):
        unpack_prefix(raw_prefix(hlen=MAX_HEADER_LEN + 1))
    with pytest.raises(ProtocolError, match="payload"):
        unpack_prefix(raw_prefix(plen=MAX_PAYLOAD_LEN + 1))


def test_custom_payload_limit() -> None:
    assert unpack_prefix(raw_prefix(plen=100), max_payload=100).payload_len == 100
    with pytest.raises(ProtocolError, match="payload"):
        unpack_prefix(raw_prefix(plen=101), max_payload=100)


@pytest.mark.parametrize("magic", [b"CHFT", b"\x00\x00\x00\x00", b"GET ", b"chfs"])
def test_bad_magic(magic: bytes) -> None:
    with pytest.raises(ProtocolError, match="magic"):
        unpack_prefix(raw_prefix(magic=magic))


@pytest.mark.parametrize("version", [0, 2, 255])
def test_bad_version(version: int) -> None:
    with pytest.raises(ProtocolError, match="version"):
        unpack_prefix(raw_prefix(version=version))


@pytest.mark.parametrize("kind", [4, 5, 128, 255])
def test_bad_kind(kind: int) -> None:
    with pytest.raises(ProtocolError, match="kind"):
        unpack_prefix(raw_prefix(kind=kind))


@pytest.mark.parametrize(
    "prefix",
    [
        raw_prefix(hlen=2**32 - 1),
        raw_prefix(plen=2**32 - 1),
        raw_prefix(hlen=2**32 - 1, plen=2**32 - 1),
    ],
)
def test_oversized_lengths_rejected_before_allocating(prefix: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    # unpack_prefix is the gate: it must refuse without ever building a buffer.
    # Make any attempt to construct a FramePrefix (which callers then use to
    # allocate) fail loudly, so the error must come from the length check.
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("FramePrefix built for an oversized frame")

    monkeypatch.setattr(frame, "FramePrefix", boom)
    with pytest.raises(ProtocolError):
        unpack_prefix(prefix)


def test_magic_checked_before_lengths() -> None:
    # A hostile prefix with both a bad magic and huge lengths gets the magic error.
    with pytest.raises(ProtocolError, match="magic"):
        unpack_prefix(raw_prefix(magic=b"XXXX", hlen=2**32 - 1))


# -- header codec -------------------------------------------------------------


@given(
    st.dictionaries(
        st.text(max_size=10),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(-(2**63), 2**64 - 1),
            st.floats(allow_nan=False),
            st.text(max_size=20),
            st.binary(max_size=20),
            st.lists(st.integers(-5, 5), max_size=4),
        ),
        max_size=8,
    )
)
def test_header_round_trip(header: dict[str, object]) -> None:
    assert decode_header(encode_header(header)) == header


def test_bytes_and_str_stay_distinct() -> None:
    out = decode_header(encode_header({"a": b"x", "b": "x"}))
    assert out == {"a": b"x", "b": "x"}
    assert isinstance(out["a"], bytes) and isinstance(out["b"], str)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never used in msgpack
        b"\x81",  # map of one, truncated
        b"\xdf\xff\xff\xff\xff",  # map32 claiming 4 billion entries, no data
        b"\xdd\xff\xff\xff\xff",  # array32 claiming 4 billion entries
        b"\xdb\xff\xff\xff\xff",  # str32 claiming 4 GiB
        encode_header({"a": 1}) + b"\x00",  # trailing data
        b"\x81\xa1a\xa3\xff\xfe\xfd",  # invalid utf-8 in a str
        bytes(range(256)),
    ],
)
def test_decode_garbage_raises_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_header(data)


@given(st.binary(max_size=64))
def test_decode_never_raises_anything_but_protocol_error(data: bytes) -> None:
    try:
        out = decode_header(data)
    except ProtocolError:
        return
    assert isinstance(out, dict)


@pytest.mark.parametrize("value", [[1, 2], 5, "map", b"map", None, True, 1.5])
def test_decode_non_map(value: object) -> None:
    with pytest.raises(ProtocolError, match="not a map"):
        decode_header(msgpack.packb(value, use_bin_type=True))


@pytest.mark.parametrize("key", [1, -1, 1.5, None, True])
def test_decode_non_string_keys(key: object) -> None:
    data = msgpack.packb({key: 1}, use_bin_type=True, strict_types=False)
    with pytest.raises(ProtocolError):
        decode_header(data)


def test_decode_bytes_keys_rejected() -> None:
    data = msgpack.packb({b"ino": 1}, use_bin_type=True)
    with pytest.raises(ProtocolError):
        decode_header(data)


def test_nested_map_with_int_keys_rejected() -> None:
    data = msgpack.packb({"attr": {1: 2}}, use_bin_type=True)
    with pytest.raises(ProtocolError):
        decode_header(data)


def test_unpack_prefix_is_struct_sized() -> None:
    # The caller always reads exactly PREFIX_SIZE bytes; anything else is a
    # programming error, not a peer error, and must not be silently accepted.
    with pytest.raises((ProtocolError, struct.error)):
        unpack_prefix(raw_prefix()[:-1])
