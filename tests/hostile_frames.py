"""Hostile frames for fuzzing (issue 12), and a blocking peer that sends them and watches what comes back.

Shared by the in-process fuzz test (tests/integration/test_rpc_fuzz.py, an `RpcServer` on a thread) and
the one against real daemons (tests/cluster/test_fuzz_daemons.py).  Imported as ``hostile_frames``:
pytest puts ``tests/`` on the path for the ``tests/conftest.py`` beside it.

A *plan* is one connection: optionally the real handshake with the cluster secret, then a few hostile
frames (random bytes, truncated frames, lying or oversized lengths, wrongly typed headers, unknown message
types, handshake messages out of order, unsolicited answers, and -- only after authenticating --
well-formed read-only requests with hostile values), sent in a few pieces.  Nothing here can change a
cluster's state when invariant 4 holds: before the handshake, even well-formed changes are sent (they must
be refused); after it, every request that would change something is made invalid first.

`run_plan` sends a plan and reads, every read with a timeout, until the server closes; it fails with
`Hang` when the server neither closes nor answers in time, and with `AssertionError` when what came back
is not a sequence of well-formed frames.
"""

from __future__ import annotations

import os
import random
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from chunkfs.common.addr import parse_addr
from chunkfs.common.errors import ProtocolError
from chunkfs.protocol.frame import (
    MAGIC,
    MAX_HEADER_LEN,
    MAX_PAYLOAD_LEN,
    PREFIX,
    PREFIX_SIZE,
    PROTOCOL_VERSION,
    Kind,
    decode_header,
    encode_header,
    pack_prefix,
    unpack_prefix,
)
from chunkfs.protocol.messages import SPECS, Msg, spec_of, validate_request
from chunkfs.protocol.rpc import NONCE_SIZE, PRE_AUTH_MAX_HEADER, PRE_AUTH_SCRATCH, _proof

#: One read from the server may wait this long; longer, and the server counts as hung.
READ_TIMEOUT = 10.0
#: From the last byte sent to the server's close, at most this long (a handler may be working).
CLOSE_TIMEOUT = 30.0
#: The most a server may send back on one hostile connection (reads of whole chunks are allowed).
MAX_REPLY = 64 << 20

#: Requests that change nothing, whatever their values: after authenticating, only these are sent well formed.
READ_ONLY = (
    Msg.PING, Msg.LOOKUP, Msg.GETATTR, Msg.RESOLVE, Msg.READDIR, Msg.CHUNK_READ, Msg.CLUSTER_STAT,
    Msg.GET_EVENTS, Msg.GET_CONFIG, Msg.CS_READ, Msg.CS_CHECKSUMS,
)
KNOWN_TYPES = tuple(int(m) for m in Msg)
UNKNOWN_TYPES = st.integers(0, 0xFFFF).filter(lambda t: t not in KNOWN_TYPES)


class Hang(AssertionError):
    """The server neither answered nor closed the connection in time."""


@dataclass(frozen=True)
class Plan:
    """One hostile connection."""

    authenticate: bool
    role: str  # the role claimed in HELLO
    frames: tuple[bytes, ...]
    cuts: tuple[int, ...]  # the stream is sent in pieces, cut at these fractions (per mille)
    half_close: bool  # shut our side down after sending (else only when the server must close by itself)


@dataclass
class Outcome:
    frames_sent: int = 0
    replies: list[tuple[Kind, int, int, dict[str, Any]]] = field(default_factory=list)
    reset: bool = False  # the server reset the connection (unread bytes of ours were in its buffer)
    definite: bool = False  # the stream is a protocol error the server must close on by itself

    @property
    def error_codes(self) -> list[str]:
        return [h.get("code", "?") for k, _, _, h in self.replies if k == Kind.ERROR]


# -- values ------------------------------------------------------------------------------------------

def _ints(extra: tuple[int, ...]) -> st.SearchStrategy[int]:
    edges = [0, 1, -1, 2, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, -(2**63), 2**64 - 1, 1 << 20, 4 << 20]
    choices = [st.sampled_from(edges), st.integers(-(2**63), 2**64 - 1), st.integers(-5, 5000)]
    if extra:
        choices.insert(0, st.sampled_from(sorted(set(extra))))
    return st.one_of(*choices)


_TEXTS = st.one_of(
    st.text(max_size=24),
    st.sampled_from(["", "/", "//", ".", "..", "/..", "a/b", "/a/../..", "\x00", "x" * 300, "/" * 100]),
)
_BYTES = st.one_of(st.binary(max_size=48), _TEXTS.map(lambda s: s.encode("utf-8", "surrogatepass")))
_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(), _TEXTS, _BYTES,
)
ANY_VALUE = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)


def _value_of(types: tuple[type, ...], ints: st.SearchStrategy[int]) -> st.SearchStrategy[Any]:
    options: list[st.SearchStrategy[Any]] = []
    for t in types:
        if t is bool:
            options.append(st.booleans())
        elif t is int:
            options.append(ints)
        elif t is float:
            options.append(st.floats())
        elif t is str:
            options.append(_TEXTS)
        elif t is bytes:
            options.append(_BYTES)
        elif t is list:
            options.append(st.lists(st.one_of(ints, st.lists(st.one_of(ints, _TEXTS), max_size=3), ANY_VALUE),
                                    max_size=5))
        elif t is dict:
            options.append(st.dictionaries(st.text(max_size=8), ANY_VALUE, max_size=4))
        elif t is type(None):
            options.append(st.none())
    return st.one_of(*options)


@st.composite
def schema_header(draw: st.DrawFn, msg: Msg, ints: st.SearchStrategy[int]) -> dict[str, Any]:
    """A request header with the declared fields and types, holding hostile values."""
    header: dict[str, Any] = {}
    for fl in SPECS[msg].request:
        if fl.optional and draw(st.booleans()):
            continue
        header[fl.name] = draw(_value_of(fl.types, ints))
    return header


def is_valid(mtype: int, header: Any, payload_len: int = 0) -> bool:
    try:
        validate_request(mtype, header, payload_len)
    except ProtocolError:
        return False
    return True


@st.composite
def broken_header(draw: st.DrawFn, msg: Msg, ints: st.SearchStrategy[int]) -> Any:
    """A header for `msg` that fails validation: a field missing, unknown, or of the wrong type; or no map."""
    header = draw(schema_header(msg, ints))
    how = draw(st.sampled_from(["drop", "unknown", "wrong_type", "not_a_map", "bad_keys"]))
    required = [fl.name for fl in SPECS[msg].request if not fl.optional]
    if how == "drop" and required:
        del header[draw(st.sampled_from(required))]
    elif how == "wrong_type" and header:
        name = draw(st.sampled_from(sorted(header)))
        types = next(fl.types for fl in SPECS[msg].request if fl.name == name)
        header[name] = draw(ANY_VALUE.filter(
            lambda v: not isinstance(v, types) or (isinstance(v, bool) and bool not in types)))
    elif how == "not_a_map":
        return draw(st.one_of(st.lists(ANY_VALUE, max_size=3), _SCALARS))
    elif how == "bad_keys":
        return {**header, draw(st.integers(-3, 3)): draw(ANY_VALUE)}
    if is_valid(msg, header):
        header["zz_fuzz"] = draw(ANY_VALUE)  # whatever happened above, never a valid request
    return header


# -- frames ------------------------------------------------------------------------------------------

def frame_bytes(kind: int, mtype: int, rid: int, header: Any, payload: bytes = b"") -> bytes:
    body = encode_header(header)
    return pack_prefix(Kind(kind), mtype, rid, len(body), len(payload)) + body + payload


_RIDS = st.one_of(st.integers(0, 3), st.integers(0, 2**64 - 1))
_LENGTHS = st.one_of(
    st.integers(0, 64),
    st.sampled_from([PRE_AUTH_MAX_HEADER, PRE_AUTH_MAX_HEADER + 1, PRE_AUTH_SCRATCH, MAX_HEADER_LEN,
                     MAX_HEADER_LEN + 1, MAX_PAYLOAD_LEN, MAX_PAYLOAD_LEN + 1, 2**31, 2**32 - 1]),
    st.integers(0, 2**32 - 1),
)
#: Big random byte strings come from a seed: cheap for hypothesis to carry, still reproducible.
_BIG_BYTES = st.builds(lambda seed, n: random.Random(seed).randbytes(n), st.integers(0, 2**32), st.integers(0, 6000))
_PAYLOADS = st.one_of(st.just(b""), st.binary(max_size=32), _BIG_BYTES)


def _garbage() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(min_size=1, max_size=64),
        _BIG_BYTES.filter(bool),
        st.binary(max_size=64).map(lambda b: MAGIC + b),
        st.sampled_from([b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
                         b"\x00" * PREFIX_SIZE, b"\xff" * PREFIX_SIZE]),
    )


@st.composite
def lying_prefix(draw: st.DrawFn) -> bytes:
    """A fixed part with any magic, version, kind, type and lengths, then a body of any length."""
    magic = draw(st.one_of(st.just(MAGIC), st.binary(min_size=4, max_size=4)))
    version = draw(st.one_of(st.just(PROTOCOL_VERSION), st.integers(0, 255)))
    kind = draw(st.one_of(st.sampled_from([0, 1, 2]), st.integers(0, 255)))
    mtype = draw(st.one_of(st.sampled_from(KNOWN_TYPES), st.integers(0, 0xFFFF)))
    rid = draw(_RIDS)
    hlen, plen = draw(_LENGTHS), draw(st.one_of(st.just(0), _LENGTHS))
    body = draw(st.one_of(
        st.binary(max_size=48),
        ANY_VALUE.map(encode_header),
        _BIG_BYTES,
    ))
    return PREFIX.pack(magic, version, kind, mtype, rid, hlen, plen) + body


@st.composite
def length_lie(draw: st.DrawFn, inner: st.SearchStrategy[bytes]) -> bytes:
    """A well-formed frame whose header or payload length is off (by a little, or by a lot)."""
    data = bytearray(draw(inner))
    if len(data) < PREFIX_SIZE:
        return bytes(data)
    magic, version, kind, mtype, rid, hlen, plen = PREFIX.unpack_from(data)
    delta = draw(st.one_of(st.integers(-8, 8), _LENGTHS))
    if draw(st.booleans()):
        hlen = max(0, min(2**32 - 1, hlen + delta if abs(delta) < 64 else delta))
    else:
        plen = max(0, min(2**32 - 1, plen + delta if abs(delta) < 64 else delta))
    PREFIX.pack_into(data, 0, magic, version, kind, mtype, rid, hlen, plen)
    return bytes(data)


def hello(cluster: str, role: str = "client", node: str = "fuzz", nonce: bytes | None = None) -> dict[str, Any]:
    return {"cluster": cluster, "nonce": os.urandom(NONCE_SIZE) if nonce is None else nonce,
            "role": role, "node": node}


@st.composite
def handshake_out_of_order(draw: st.DrawFn, cluster: str) -> bytes:
    """HELLO and PROOF where they do not belong: twice, as answers, with wrong proofs, odd fields."""
    nonce = draw(st.one_of(st.binary(min_size=NONCE_SIZE, max_size=NONCE_SIZE), st.binary(max_size=40)))
    fields = {"cluster": draw(st.one_of(st.just(cluster), _TEXTS)), "nonce": nonce,
              "role": draw(st.sampled_from(["client", "cs", "mds", "", "admin"])), "node": draw(_TEXTS)}
    which = draw(st.sampled_from([Msg.HELLO, Msg.PROOF]))
    header: Any = fields if which == Msg.HELLO else {"proof": draw(st.binary(min_size=32, max_size=32))}
    if draw(st.booleans()):
        header = draw(broken_header(which, _ints(())))
    kind = draw(st.sampled_from([Kind.REQUEST, Kind.REQUEST, Kind.RESPONSE, Kind.ERROR]))
    payload = draw(st.one_of(st.just(b""), st.binary(min_size=1, max_size=16)))
    return frame_bytes(kind, which, draw(_RIDS), header, payload)


@st.composite
def well_formed_request(draw: st.DrawFn, types: tuple[Msg, ...], ints: st.SearchStrategy[int]) -> bytes:
    msg = draw(st.sampled_from(types))
    header = draw(schema_header(msg, ints))
    payload = draw(_PAYLOADS) if SPECS[msg].request_payload else b""
    return frame_bytes(Kind.REQUEST, msg, draw(_RIDS), header, payload)


@st.composite
def invalid_request(draw: st.DrawFn, ints: st.SearchStrategy[int]) -> bytes:
    """A request of a known type whose header fails validation (any type: nothing can act on it)."""
    msg = draw(st.sampled_from(list(Msg)))
    payload = draw(_PAYLOADS) if SPECS[msg].request_payload else b""
    return frame_bytes(Kind.REQUEST, msg, draw(_RIDS), draw(broken_header(msg, ints)), payload)


@st.composite
def unknown_type(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from([Kind.REQUEST, Kind.REQUEST, Kind.RESPONSE, Kind.ERROR]))
    header = draw(st.one_of(st.dictionaries(st.text(max_size=8), ANY_VALUE, max_size=4), ANY_VALUE))
    return frame_bytes(kind, draw(UNKNOWN_TYPES), draw(_RIDS), header, draw(st.one_of(st.just(b""), _PAYLOADS)))


@st.composite
def unsolicited_answer(draw: st.DrawFn) -> bytes:
    """A response or error frame nobody asked for (any type, any id)."""
    kind = draw(st.sampled_from([Kind.RESPONSE, Kind.ERROR]))
    header = draw(st.dictionaries(st.sampled_from(["code", "message", "attr", "stat", "x"]), ANY_VALUE, max_size=3))
    payload = draw(st.one_of(st.just(b""), st.binary(max_size=32)))
    return frame_bytes(kind, draw(st.sampled_from(KNOWN_TYPES)), draw(_RIDS), header, payload)


def hostile_frame(cluster: str, authenticated: bool, ints: tuple[int, ...] = ()) -> st.SearchStrategy[bytes]:
    """One hostile frame, perhaps truncated.

    Before authentication any well-formed request may be sent (it must be refused); after it, only
    read-only ones are sent well formed.  `ints` are numbers worth trying (inodes, chunk ids, versions).
    """
    numbers = _ints(ints)
    requests = READ_ONLY if authenticated else tuple(Msg)
    whole = st.one_of(
        _garbage(),
        lying_prefix(),
        length_lie(st.one_of(well_formed_request(requests, numbers), invalid_request(numbers))),
        invalid_request(numbers),
        unknown_type(),
        handshake_out_of_order(cluster),
        unsolicited_answer(),
        well_formed_request(requests, numbers),
    )
    return st.tuples(whole, st.one_of(st.none(), st.none(), st.integers(0, 2**16))).map(
        lambda fc: fc[0][:fc[1] % max(1, len(fc[0]))] if fc[1] is not None and len(fc[0]) > 1 else fc[0])


@st.composite
def plans(draw: st.DrawFn, cluster: str, ints: tuple[int, ...] = (), max_frames: int = 4) -> Plan:
    authenticate = draw(st.booleans())
    frames = draw(st.lists(hostile_frame(cluster, authenticate, ints), min_size=1, max_size=max_frames))
    if not authenticate and draw(st.integers(0, 3)) == 0:
        # A genuine HELLO first: the rest arrives where PROOF belongs.
        frames = [frame_bytes(Kind.REQUEST, Msg.HELLO, 0, hello(cluster)), *frames]
    return Plan(
        authenticate=authenticate,
        role=draw(st.sampled_from(["client", "client", "cs", "mds"])),
        frames=tuple(frames),
        cuts=tuple(sorted(draw(st.lists(st.integers(1, 999), max_size=3)))),
        half_close=draw(st.integers(0, 3)) > 0,
    )


# -- what the server must do ---------------------------------------------------------------------------

def must_close(data: bytes, authenticated: bool) -> bool:
    """Whether these bytes are a protocol error the server must answer by closing, without our EOF.

    Follows the frame format (frame.py) and the limits before trust (rpc.py): the first frame that breaks
    a rule decides.  A stream that ends inside a frame, or holds only frames a server may serve or
    ignore, needs our half-close (or the handshake deadline) to end.
    """
    pos, complete = 0, 0
    if not authenticated and len(data) >= PRE_AUTH_SCRATCH:
        return True
    while len(data) - pos >= PREFIX_SIZE:
        try:
            if authenticated:
                prefix = unpack_prefix(data[pos:pos + PREFIX_SIZE])
                if prefix.kind == Kind.REQUEST and prefix.payload_len and not spec_of(prefix.type)[1].request_payload:
                    return True
            else:
                prefix = unpack_prefix(data[pos:pos + PREFIX_SIZE], 0, PRE_AUTH_MAX_HEADER)
        except ProtocolError:
            return True
        end = pos + PREFIX_SIZE + prefix.header_len + prefix.payload_len
        if end > len(data):
            return False
        try:
            header = decode_header(data[pos + PREFIX_SIZE:pos + PREFIX_SIZE + prefix.header_len])
        except ProtocolError:
            return True
        complete += 1
        if not authenticated:
            # Only a genuine HELLO may come first, and a PROOF nobody here can make second.
            if complete > 1 or prefix.kind != Kind.REQUEST or prefix.type != Msg.HELLO:
                return True
            if not is_valid(Msg.HELLO, header) or len(header["nonce"]) != NONCE_SIZE:
                return True
        elif prefix.kind == Kind.REQUEST and not is_valid(prefix.type, header, prefix.payload_len):
            return True
        pos = end
    return False


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed during the handshake")
        out += chunk
    return bytes(out)


def _recv_frame(sock: socket.socket) -> tuple[Kind, int, dict[str, Any]]:
    prefix = unpack_prefix(_recv_exactly(sock, PREFIX_SIZE))
    header = decode_header(_recv_exactly(sock, prefix.header_len))
    _recv_exactly(sock, prefix.payload_len)
    return prefix.kind, prefix.type, header


def handshake(sock: socket.socket, cluster: str, secret: bytes, role: str = "client") -> None:
    """The real handshake, by hand, over a blocking socket (every read bounded by the socket's timeout)."""
    nonce = os.urandom(NONCE_SIZE)
    sock.sendall(frame_bytes(Kind.REQUEST, Msg.HELLO, 0, hello(cluster, role, nonce=nonce)))
    kind, _, header = _recv_frame(sock)
    assert kind == Kind.RESPONSE, header
    assert header["proof"] == _proof(secret, b"server", cluster, nonce, header["nonce"]), "server proof"
    sock.sendall(frame_bytes(Kind.REQUEST, Msg.PROOF, 0, {"proof": _proof(secret, b"client", cluster,
                                                                           header["nonce"], nonce)}))
    kind, _, header = _recv_frame(sock)
    assert kind == Kind.RESPONSE, header


def parse_replies(data: bytes) -> tuple[list[tuple[Kind, int, int, dict[str, Any]]], int]:
    """What the server sent, and how many bytes of it were whole frames; every frame must be well formed."""
    out = []
    pos = 0
    while len(data) - pos >= PREFIX_SIZE:
        prefix = unpack_prefix(data[pos:pos + PREFIX_SIZE])
        end = pos + PREFIX_SIZE + prefix.header_len + prefix.payload_len
        if end > len(data):
            break
        header = decode_header(data[pos + PREFIX_SIZE:pos + PREFIX_SIZE + prefix.header_len])
        assert prefix.kind in (Kind.RESPONSE, Kind.ERROR), f"the server sent a {prefix.kind.name}: {header}"
        if prefix.kind == Kind.ERROR:
            assert isinstance(header.get("code"), str) and isinstance(header.get("message"), str), header
        out.append((prefix.kind, prefix.type, prefix.request_id, header))
        pos = end
    return out, pos


def run_plan(addr: str, plan: Plan, cluster: str, secret: bytes) -> Outcome:
    """Send one plan on a new connection and read until the server closes it (bounded)."""
    host, port = parse_addr(addr)
    out = Outcome(frames_sent=len(plan.frames))
    data = b"".join(plan.frames)
    out.definite = must_close(data, plan.authenticate)
    with socket.create_connection((host, port), timeout=READ_TIMEOUT) as sock:
        if plan.authenticate:
            handshake(sock, cluster, secret, plan.role)
        shut = False
        bounds = [0, *(len(data) * c // 1000 for c in plan.cuts), len(data)]
        try:
            for start, end in zip(bounds, bounds[1:], strict=False):
                if end > start:
                    sock.sendall(data[start:end])
            if plan.half_close or not out.definite:
                shut = True
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server closed (or reset) early: fine, as long as it really closed (read below)
        received = bytearray()
        deadline = time.monotonic() + CLOSE_TIMEOUT
        while True:
            if time.monotonic() > deadline:
                raise Hang(f"{addr} still sending after {CLOSE_TIMEOUT:g}s ({len(received)} bytes)")
            try:
                chunk = sock.recv(1 << 20)
            except TimeoutError:
                raise Hang(f"{addr} neither answered nor closed within {READ_TIMEOUT:g}s "
                           f"(authenticated={plan.authenticate}, {len(data)} bytes sent, "
                           f"must close={out.definite}, received {len(received)} bytes)") from None
            except ConnectionResetError:
                out.reset = True
                break
            if not chunk:
                break
            received += chunk
            assert len(received) <= MAX_REPLY, f"{addr} sent more than {MAX_REPLY} bytes"
    out.replies, used = parse_replies(bytes(received))
    assert out.reset or used == len(received), f"{len(received) - used} stray bytes after the last whole frame"
    if out.definite and not out.reset and (plan.authenticate or not shut):
        # A protocol error gets an error frame (then the close).  Before the handshake, a peer that has
        # shut its side is only closed: what it sent after the frame being handled is not looked at.
        assert out.error_codes, f"closed without an error frame; replies {out.replies}"
    return out


def served(addr: str, cluster: str, secret: bytes) -> dict[str, Any]:
    """A fresh connection with the secret gets a PING answered: the server still serves (bounded reads)."""
    host, port = parse_addr(addr)
    with socket.create_connection((host, port), timeout=READ_TIMEOUT) as sock:
        handshake(sock, cluster, secret)
        sock.sendall(frame_bytes(Kind.REQUEST, Msg.PING, 7, {}))
        kind, mtype, header = _recv_frame(sock)
    assert (kind, mtype) == (Kind.RESPONSE, Msg.PING), header
    return header
