"""The frame: how every message crosses a TCP connection.

    +-------+---------+------+------+------------+------------+-------------+
    | magic | version | kind | type | request id | header len | payload len |
    |  4 B  |   1 B   | 1 B  | 2 B  |    8 B     |    4 B     |     4 B     |
    +-------+---------+------+------+------------+------------+-------------+
    then `header len` bytes of msgpack (a map), then `payload len` raw bytes.

The fixed part is read first, so both lengths are checked against the limits
*before* a byte of the rest is allocated (invariant 4).  Bulk chunk data
travels as the raw payload, never inside msgpack, so it is neither encoded nor
copied by the codec.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Any

import msgpack

from chunkfs.common.errors import ProtocolError

MAGIC = b"CHFS"
PROTOCOL_VERSION = 1
PREFIX = struct.Struct("!4sBBHQII")
PREFIX_SIZE = PREFIX.size

#: A msgpack header is small: names, ids, a list of replicas, a page of a
#: directory listing.  Anything bigger is hostile or a bug.
MAX_HEADER_LEN = 1 << 20
#: Chunk data is sent in pieces of at most this size (clients split larger I/O).
MAX_PAYLOAD_LEN = 8 << 20
#: The largest single I/O a client sends in one request.
MAX_IO_SIZE = 4 << 20


class Kind(enum.IntEnum):
    REQUEST = 0
    RESPONSE = 1
    ERROR = 2
    #: A request that gets no answer, not even an empty one (request id 0): Raft's messages,
    #: whose replies travel as messages of their own.  Half the frames of a commit.
    NOTICE = 3


@dataclass(slots=True, frozen=True)
class FramePrefix:
    kind: Kind
    type: int
    request_id: int
    header_len: int
    payload_len: int


_KINDS = frozenset(Kind)


def pack_prefix(kind: Kind, mtype: int, request_id: int, header_len: int, payload_len: int) -> bytes:
    return PREFIX.pack(MAGIC, PROTOCOL_VERSION, kind, mtype, request_id, header_len, payload_len)


def unpack_prefix(data: bytes, max_payload: int = MAX_PAYLOAD_LEN, max_header: int = MAX_HEADER_LEN) -> FramePrefix:
    """Parse and check the fixed part; raise ProtocolError on anything wrong."""
    magic, version, kind, mtype, request_id, header_len, payload_len = PREFIX.unpack(data)
    if magic != MAGIC:
        raise ProtocolError("bad frame magic: the peer does not speak the ChunkFS protocol")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version} is not supported (this node speaks {PROTOCOL_VERSION})")
    if kind not in _KINDS:
        raise ProtocolError(f"bad frame kind {kind}")
    if header_len > max_header:
        raise ProtocolError(f"header of {header_len} bytes exceeds the limit of {max_header}")
    if payload_len > max_payload:
        raise ProtocolError(f"payload of {payload_len} bytes exceeds the limit of {max_payload}")
    return FramePrefix(Kind(kind), mtype, request_id, header_len, payload_len)


def encode_header(header: dict[str, Any]) -> bytes:
    return msgpack.packb(header, use_bin_type=True)


def decode_header(data: bytes) -> dict[str, Any]:
    """Decode a msgpack header; it must be a map with string keys."""
    try:
        value = msgpack.unpackb(
            data, raw=False, strict_map_key=True, use_list=True
        )
    except Exception as exc:  # noqa: BLE001 - msgpack raises many types on garbage
        raise ProtocolError(f"undecodable message header: {exc.__class__.__name__}") from None
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ProtocolError("message header is not a map with string keys")
    return value
