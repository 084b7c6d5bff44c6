"""`chunkfs --retry-for SECONDS`: how long a command retries what the cluster cannot do yet.

A script that would rather fail fast than wait out the default 20 s (a master
being elected, a chunk server coming back) says so; a bad value is refused
before anything is sent.
"""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from chunkfs.cli import context
from chunkfs.cli.main import build_parser
from chunkfs.protocol.mds_link import DEFAULT_RETRY_FOR


class FakeClient:
    def __init__(self, config: Any) -> None:
        self.mds = argparse.Namespace(retry_for=DEFAULT_RETRY_FOR)

    async def close(self) -> None:
        return None


def retry_for_seen(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> float:
    monkeypatch.setattr(context, "Client", FakeClient)
    monkeypatch.setattr(context, "load_client_config", lambda name: name)
    seen: list[float] = []

    async def command(client: Any, args: argparse.Namespace) -> int:
        seen.append(client.mds.retry_for)
        return 0

    assert context.run_with_client(build_parser().parse_args(argv), command) == 0
    return seen[0]


def test_the_client_retries_as_long_as_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    assert retry_for_seen(monkeypatch, ["-c", "x", "--retry-for", "2.5", "ls", "/"]) == 2.5
    assert retry_for_seen(monkeypatch, ["-c", "x", "--retry-for", "0", "ls", "/"]) == 0
    assert retry_for_seen(monkeypatch, ["-c", "x", "ls", "/"]) == DEFAULT_RETRY_FOR
    # A subcommand's own --wait (rm-cs) is another option: it does not set the retries.
    assert retry_for_seen(monkeypatch, ["-c", "x", "rm-cs", "3", "--wait"]) == DEFAULT_RETRY_FOR


@pytest.mark.parametrize("bad", ["x", "-1", "nan", "inf", "1e9"])
def test_a_bad_value_is_refused_with_one_line(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["-c", "x", "--retry-for", bad, "ls", "/"])
    assert info.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error == f"chunkfs: error: argument --retry-for: expected seconds from 0 to 86400, got {bad!r}"
