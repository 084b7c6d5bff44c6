"""A link to the master metadata server, for whoever sends it requests.

The client library talks to the master through it, and so does a new MDS
asking to join the group.  It connects to any known MDS, follows redirects to
the master, and on a lost connection reconnects and retries the request — a
bounded number of times and for a bounded time, so a dead cluster gives a
clear error, not a hang.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from chunkfs.common.errors import ChunkFSError, NotMaster, Timeout, Unavailable
from chunkfs.common.timings import TIMINGS
from chunkfs.protocol.messages import EXACTLY_ONCE, ROOT_INO, Msg
from chunkfs.protocol.rpc import SILENCE_LIMIT, Connection, Credentials, NoticeHandler, connect

logger = logging.getLogger(__name__)

#: A request's header, or a function that builds it when the request goes out (`MdsLink.call`).
Header = dict[str, Any] | Callable[[], dict[str, Any]]

#: How long a request keeps trying to reach a master before it fails.
DEFAULT_RETRY_FOR = 20.0
#: How long one attempt waits for its answer before it is sent again (to the next MDS).
DEFAULT_CALL_TIMEOUT = 30.0
#: A master that has sent nothing for this long while requests wait (its connection pings it after
#: a second, and a live master answers a ping from its event loop at once) is suspected: the other
#: metadata servers are asked who the master is, again and again while it stays so.  If they name
#: another (the group elected one: a frozen or cut-off master is replaced in 1-2 s), the requests go
#: there now, not after the connection's whole silence limit (8 s) or the master's resumption.
SUSPECT_SILENCE = 2.0
#: The longest pause before asking the master again after it answered "unavailable, retry" itself.
ANSWERED_RETRY_PAUSE = 0.2
#: Bound on each question to another metadata server about the master (connect, and its answer).
LEADER_QUESTION_TIMEOUT = 1.0
#: ... and the pause before asking again while none names a new master (an election takes 1-2 s).
LEADER_QUESTION_AGAIN = 0.5
#: A metadata server that has not completed a connection within this long is raced by the next one
#: listed: a frozen one (SIGSTOP, a hung host) accepts the connection and never answers, and the
#: addresses one after another cost every command ~3 s per such server first in the list.
CONNECT_STAGGER = 0.5
#: How long one connection attempt may take.
CONNECT_TIMEOUT = 3.0


class MdsLink:
    def __init__(self, addrs: tuple[str, ...], creds: Credentials, retry_for: float = DEFAULT_RETRY_FOR) -> None:
        self.addrs = list(addrs)
        self.creds = creds
        self.retry_for = retry_for
        self.call_timeout = DEFAULT_CALL_TIMEOUT
        self._conn: Connection | None = None
        self._lock = asyncio.Lock()
        #: Exactly-once changes: this link's id, and the sequence numbers of changes not yet answered.
        self.client_id = f"{creds.node}/{os.urandom(6).hex()}"
        self._seq = itertools.count(1)
        self._unanswered: set[int] = set()
        #: Notices the master sends on this link (a watching mount's INVALIDATE).
        self.notice_handler: NoticeHandler | None = None
        #: Run on each new connection before any request goes on it (a mount asks to WATCH there).
        self.on_connect: Callable[[Connection], Awaitable[None]] | None = None
        #: Watches the connection for a silent master (see SUSPECT_SILENCE).
        self._watchdog: asyncio.Task[None] | None = None
        #: Why the last connection to an address failed, until one succeeds: said when the others
        #: name it as the master (it may refuse connections while the followers answer).
        self._failed: dict[str, ChunkFSError] = {}
        #: A change that may be in a master's log (it timed out there) waits past `retry_for` until a
        #: master answers it, rather than fail (a mount: see `_call`).
        self.wait_out_unknown = False

    async def _connection(self) -> Connection:
        async with self._lock:
            if self._conn is not None and not self._conn.closed:
                return self._conn
            addr, conn = await self._connect_first()
            if self.on_connect is not None:
                try:
                    await self.on_connect(conn)
                except (ChunkFSError, OSError) as exc:  # e.g. a follower: the request's redirect comes next
                    logger.debug("on connecting to %s: %s", addr, exc)
            self._conn = conn
            if self._watchdog is not None:
                self._watchdog.cancel()
            self._watchdog = asyncio.get_running_loop().create_task(
                watch_for_silent_master(conn, lambda: self.addrs, self.creds, self._put_first))
            self._put_first(addr)  # the working address, for next time
            self._failed.pop(addr, None)
            logger.debug("connected to the metadata server at %s", addr)
            return self._conn

    async def _connect_first(self) -> tuple[str, Connection]:
        """A connection to the first metadata server that completes one, trying them in order, each
        raced by the next after `CONNECT_STAGGER`; the others are given up (closed if they completed)."""
        loop = asyncio.get_running_loop()
        attempts: dict[asyncio.Task[Connection], str] = {}
        errors: list[str] = []
        won: asyncio.Task[Connection] | None = None
        try:
            addrs = list(self.addrs)  # (reordered by requests that fail meanwhile)
            for n, addr in enumerate(addrs):
                # Watched for silence: a frozen master (SIGSTOP, a hung host) is given up in seconds and
                # the request sent on to the one the others elect, not after the whole call timeout.
                attempts[loop.create_task(connect(addr, self.creds, notice_handler=self.notice_handler,
                                                  timeout=CONNECT_TIMEOUT, silence_limit=SILENCE_LIMIT))] = addr
                last = n == len(addrs) - 1
                deadline = loop.time() + CONNECT_STAGGER
                while won is None and (pending := [t for t in attempts if not t.done()]):
                    wait = None if last else deadline - loop.time()
                    if wait is not None and wait <= 0:
                        break  # the next address joins the race
                    done, _ = await asyncio.wait(pending, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        exc = task.exception()
                        if exc is None:
                            won = won or task
                        elif isinstance(exc, Unavailable | Timeout):
                            errors.append(str(exc))
                            self._failed[attempts[task]] = exc
                        else:
                            raise exc  # a refusal that another address would repeat (a wrong secret, say)
                if won is not None:
                    return attempts[won], won.result()
            raise Unavailable("no metadata server reachable (" + "; ".join(errors) + "): is the cluster running?")
        finally:
            for task in attempts:
                if task is won:
                    continue
                if not task.done():
                    task.cancel()
                elif not task.cancelled() and task.exception() is None:
                    task.result().close()

    async def call(
        self, msg: Msg, header: Header, timeout: float | None = None, payload: bytes | memoryview = b""
    ) -> dict[str, Any]:
        """Send one request to the master, retrying (bounded) through redirects, lost connections and timeouts.

        `header` may be a function that builds it: called each time the request goes out, after the
        connection's `on_connect` (a mount's answer may depend on what it learns there).

        A metadata change is sent with this link's id and a sequence number
        that every retry repeats, so a change that took effect before its
        answer was lost is answered again, not done twice (`EXACTLY_ONCE`).
        """
        timeout = self.call_timeout if timeout is None else timeout
        started = time.perf_counter()
        if msg not in EXACTLY_ONCE:
            try:
                return await self._call(msg, header, timeout, payload)
            finally:
                TIMINGS.since(f"mds.{msg.name}", started)
        assert isinstance(header, dict), "a change sent at most once has one header for all its retries"
        seq = next(self._seq)
        self._unanswered.add(seq)
        try:
            return await self._call(
                msg, {**header, "cid": self.client_id, "seq": seq, "low": min(self._unanswered)}, timeout, payload,
                change=True)
        finally:
            self._unanswered.discard(seq)
            TIMINGS.since(f"mds.{msg.name}", started)

    async def _call(
        self, msg: Msg, header: Header, timeout: float, payload: bytes | memoryview = b"", change: bool = False,
    ) -> dict[str, Any]:
        """`change`: an exactly-once change, which `wait_out_unknown` keeps waiting for once it may be made.

        A change that timed out (the master's own "not committed in time", or no answer) may be in a
        log that a master elected later holds and commits: failed at `retry_for`, it was made after its
        error anyway (a fault probe: a rename answered EIO was made 10 s later, and the program's retry of
        it got ENOENT).  Asked again with the same sequence number once a master answers, it is answered
        with what was done, or done then.  Refused ("not the master") or never sent, it fails as before.
        """
        started = time.monotonic()
        deadline = started + self.retry_for
        pause = 0.05
        unknown = False  # sent, and timed out: it may be in some master's log
        said = False
        #: The master the followers name, when it cannot be reached: said rather than their redirect
        #: (a probe: "MDS#2 is not the master" for a master refusing every connection from this host).
        unreachable: ChunkFSError | None = None
        while True:
            conn: Connection | None = None
            sent = False
            try:
                conn = await self._connection()
                sent = True
                reply, _ = await conn.call(msg, header() if callable(header) else header, payload, timeout=timeout)
                if said:
                    logger.warning("%s: answered after %.0f s", msg.name, time.monotonic() - started)
                return reply
            except NotMaster as exc:
                hint = exc.context.get("leader")
                logger.debug("%s: %s is not the master (%s)", msg.name, conn.peer_name if conn else "?",
                             f"it names {hint}" if hint else "it knows none")
                if isinstance(hint, str) and hint:
                    self._put_first(hint)
                    failed = self._failed.get(hint)
                    unreachable = None if failed is None else \
                        Unavailable(f"the master the others name, {hint}, cannot be reached ({failed}): if it is "
                                    "down, the others elect a new one once most metadata servers run: start those "
                                    "that are down")
                elif conn is not None:
                    # No hint (an MDS cut off from the others knows no master): try the others first,
                    # or a client that can still reach that MDS would never leave it.
                    self._demote(conn.peer_name)
                last: ChunkFSError = exc
                self._drop(conn)
            except (Unavailable, Timeout) as exc:
                last = exc
                unknown = unknown or sent and isinstance(exc, Timeout) and change and self.wait_out_unknown
                if isinstance(exc, Unavailable) and conn is not None and not conn.closed:
                    # The master's own answer on a good connection (new, and waiting for its chunk
                    # servers to register; a chunk's servers still reporting): ask it again, soon.
                    # Taken for a lost connection, it sent the retries to a follower first, and
                    # their pauses grew to a second each.
                    pause = min(pause, ANSWERED_RETRY_PAUSE)
                else:
                    if conn is not None:
                        # A deposed master that cannot commit answers nothing in time; a frozen one nothing
                        # at all, and its kernel still accepts a new connection: try the others first.
                        self._demote(conn.peer_name)
                    self._drop(conn)
            if time.monotonic() + pause > deadline:
                if not unknown:
                    raise unreachable if isinstance(last, NotMaster) and unreachable is not None else last
                if not said:
                    said = True
                    logger.warning("%s: no answer for %.0f s, and it may already be in a master's log (%s): "
                                   "waiting until a master answers it, rather than fail a change that may be "
                                   "made later", msg.name, time.monotonic() - started, last)
            logger.debug("%s: %s; trying again in %.2f s", msg.name, last, pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)

    def _put_first(self, addr: str) -> None:
        """Try `addr` first from now on: the one that worked, or the master a follower or the others
        named (SUSPECT_SILENCE), known before or not."""
        if addr in self.addrs:
            self.addrs.remove(addr)
        self.addrs.insert(0, addr)

    def _drop(self, conn: Connection | None) -> None:
        """Close the connection a request failed on: the link's own, not a newer one another request
        made meanwhile (closing that one failed the requests already on it, which went elsewhere)."""
        if conn is None or conn is self._conn:
            self.close()
        else:
            conn.close()

    def _demote(self, addr: str) -> None:
        """Try `addr` last from now on.  Idempotent: every request waiting on a connection that failed
        reports it, and rotating the list once per report brought the failed address back first."""
        if addr in self.addrs and len(self.addrs) > 1:
            self.addrs.remove(addr)
            self.addrs.append(addr)

    def connections(self) -> list[Connection]:
        return [] if self._conn is None else [self._conn]

    def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None


async def watch_for_silent_master(
    conn: Connection, addrs: Callable[[], Iterable[str]], creds: Credentials, follow: Callable[[str], None]
) -> None:
    """While `conn` (to the master, watched for silence) is open: once the master has sent nothing for
    SUSPECT_SILENCE while requests wait, ask the other metadata servers (`addrs()`) who the master is;
    if they name another, `follow(it)` and close `conn`, which fails the requests waiting on it with
    Unavailable, for their owner to send again there."""
    while not conn.closed:
        silent = conn.silent_for()
        if silent < SUSPECT_SILENCE:
            # Awake when the silence would reach the mark (no request waiting: a look every half mark).
            await asyncio.sleep(SUSPECT_SILENCE - silent if silent else SUSPECT_SILENCE / 2)
            continue
        leader = await master_elsewhere([a for a in addrs() if a != conn.peer_name], creds, conn.peer_name)
        if leader is None:
            await asyncio.sleep(LEADER_QUESTION_AGAIN)  # no new master named yet: the others may be electing
        elif not conn.closed:
            logger.warning("MDS %s sent nothing for %.1f s while requests waited, and the others say the master "
                           "is %s: going there", conn.peer_name, conn.silent_for(), leader)
            follow(leader)
            conn.close(f"MDS {conn.peer_name} is silent and the others say the master is {leader}")


async def master_elsewhere(others: list[str], creds: Credentials, silent: str) -> str | None:
    """The master as `others` (metadata servers) see it, if it is not `silent`; None if none says so.

    A cheap read asked of each in turn: a master answers it, a follower names the master it knows."""
    for addr in others:
        try:
            conn = await connect(addr, creds, timeout=LEADER_QUESTION_TIMEOUT)
        except ChunkFSError:
            continue
        try:
            await conn.call(Msg.GETATTR, {"ino": ROOT_INO}, timeout=LEADER_QUESTION_TIMEOUT)
            return addr
        except NotMaster as exc:
            hint = exc.context.get("leader")
            if isinstance(hint, str) and hint and hint != silent:
                return hint
        except ChunkFSError:
            pass
        finally:
            conn.close()
    return None
