"""Error frames: every error class and its scalar context cross the wire unchanged."""

from __future__ import annotations

from typing import Any

import pytest

from chunkfs.common import errors
from chunkfs.common.errors import ChunkFSError, InternalError, NotFound, ProtocolError, error_from_code
from chunkfs.protocol.frame import decode_header, encode_header
from chunkfs.protocol.rpc import _error_from_header, _error_header

ERROR_CLASSES = [
    cls for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, ChunkFSError) and cls is not ChunkFSError
]


def test_codes_are_unique() -> None:
    codes = [cls.code for cls in ERROR_CLASSES]
    assert len(codes) == len(set(codes)), codes


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_every_error_round_trips(cls: type[ChunkFSError]) -> None:
    exc = cls("what happened", cs_id=7, chunk_id=2**50, addr="h:1", blob=b"x", items=[1], ratio=0.5)
    wire = decode_header(encode_header(_error_header(exc)))
    back = _error_from_header(wire)
    assert type(back) is cls
    assert str(back) == "what happened"
    assert back.context == {"cs_id": 7, "chunk_id": 2**50, "addr": "h:1"}
    assert back.errno == cls.errno


def test_default_message_survives() -> None:
    back = _error_from_header(decode_header(encode_header(_error_header(NotFound()))))
    assert type(back) is NotFound and str(back) == "No such file or directory."


def test_context_cannot_override_code_or_message() -> None:
    exc = NotFound("real", cs_id=1)
    exc.context["code"] = "auth"
    exc.context["message"] = "fake"
    header = _error_header(exc)
    assert header["code"] == "not_found" and header["message"] == "real"


def test_unknown_code_is_internal() -> None:
    back = _error_from_header({"code": "from-the-future", "message": "m"})
    assert type(back) is InternalError and str(back) == "m"
    assert type(error_from_code("nope", "m")) is InternalError


@pytest.mark.parametrize(
    "header",
    [{}, {"code": "not_found"}, {"message": "m"}, {"code": 1, "message": "m"}, {"code": "not_found", "message": b"m"}],
)
def test_malformed_error_frame(header: dict[str, Any]) -> None:
    assert type(_error_from_header(header)) is ProtocolError


def test_non_scalar_context_from_peer_dropped() -> None:
    back = _error_from_header({"code": "not_found", "message": "m", "a": [1], "b": {"x": 1}, "c": None, "d": 3})
    assert back.context == {"d": 3}


def test_hostile_context_key_cannot_break_the_client() -> None:
    back = _error_from_header({"code": "not_found", "message": "m", "self": 1})
    assert isinstance(back, ChunkFSError)
