"""One request sent to several replicas at once, and their answers awaited without a task each.

A head chunk server sends a small write on to the other replicas this way,
and a mount sends an fsync (or a write it alone makes to a chunk) to every
replica.  The requests all go on the wire first (`request_each`); their
answers are then awaited one after the other (`answered`), which takes as
long as the slowest of them, without the task and the gathering future per
request that `asyncio.gather` makes: on a small write's path those cost
more than the answer itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from chunkfs.common.errors import ChunkFSError
from chunkfs.protocol.messages import Msg
from chunkfs.protocol.rpc import Connection, Payload

#: A request on its way to a replica: (cs_id, address, its answer to await, or the error that kept it from going).
Sent = tuple[int, str, Awaitable[Any] | BaseException]


async def request_each(
    msg: Msg, sends: list[tuple[int, str, dict[str, Any], Payload]],
    connect: Callable[[str], Awaitable[Connection]], timeout: float,
) -> list[Sent]:
    """Send each (cs_id, address, header, payload) now; what to hand to `answered`.

    Every connection is made first, then the requests all go out with nothing
    awaited between them: a sender that dies while a connection is being made
    has sent nothing (a mount that sends a write to each replica itself must
    not leave it on some of them only, fanned_mender.py).  A replica that
    cannot be reached is an answer too (its error), so that the others still
    go and every request sent is awaited.
    """
    conns: list[Connection | ChunkFSError] = []
    for _, addr, _, _ in sends:
        try:
            conns.append(await connect(addr))
        except ChunkFSError as exc:
            conns.append(exc)
    answers: list[Sent] = []
    for (cs_id, addr, header, payload), conn in zip(sends, conns, strict=True):
        if isinstance(conn, ChunkFSError):
            answers.append((cs_id, addr, conn))
            continue
        try:
            answers.append((cs_id, addr, conn.request(msg, header, payload, timeout=timeout)))
        except ChunkFSError as exc:
            answers.append((cs_id, addr, exc))
    return answers


async def answered(answers: list[Sent]) -> None:
    """Wait for every answer; the first failure, named by the replica that failed (``cs_id``), is raised."""
    outcomes: list[BaseException | None] = []
    for i, (_, _, sent) in enumerate(answers):
        if isinstance(sent, BaseException):
            outcomes.append(sent)
            continue
        try:
            await sent
            outcomes.append(None)
        except Exception as exc:  # noqa: BLE001 - each answer awaited, the first failure raised below
            outcomes.append(exc)
        except BaseException:  # cancelled: the answers not awaited yet are still waited for, by tasks
            for _, _, later in answers[i + 1:]:
                if not isinstance(later, BaseException):
                    asyncio.ensure_future(later).add_done_callback(_looked_at)
            raise
    for (cs_id, addr, _), exc in zip(answers, outcomes, strict=True):
        if isinstance(exc, ChunkFSError):
            if "cs_id" in exc.context:
                raise exc  # a replica further down already named itself
            raise type(exc)(f"CS#{cs_id} at {addr}: {exc}", **{**exc.context, "cs_id": cs_id}) from None
        if isinstance(exc, BaseException):
            raise exc


def _looked_at(task: asyncio.Future[Any]) -> None:
    """An answer nobody waits for any more: its failure is no error to report."""
    if not task.cancelled():
        task.exception()
