"""A pure Raft core: no I/O, no clocks, no randomness of its own.

Built the way etcd's raft library is, because that shape is what makes Raft
testable: every input (a tick, a message, a proposal) is a method call, and
every output (state to persist, messages to send, entries to apply) is
collected in a `Ready` that the driver drains.  The same object runs under the
asyncio driver and under the deterministic simulator (test tooling, in
``tests/integration/raft/simulator.py``), so what the simulator proves is what
production runs.

The driver loop is::

    rd = core.ready()
    if rd.snapshot:  storage.install_snapshot(rd.snapshot); state_machine.restore(rd.snapshot.data)
    storage.append(rd.entries)            # truncates a conflicting suffix itself
    if rd.hard_state: storage.set_hard_state(rd.hard_state)
    send(rd.messages)                     # only AFTER the fsyncs above
    apply(rd.committed_entries)
    serve(rd.read_states)                 # after applying: applied >= read index
    core.advance(rd)

Features: pre-vote, check-quorum (with the leader lease it implies),
ReadIndex, leadership transfer, single-server membership changes that take
effect when appended (Raft thesis, section 4.1), snapshots with
InstallSnapshot.  Node id 0 means "nobody".

A follower the leader sent a snapshot to is in the *snapshot* state of the
leader's view (etcd's StateSnapshot): until it answers at or beyond the
snapshot's index, it gets no entries and no second copy of the snapshot,
only heartbeats that keep it from campaigning.  The transfer itself may take
long (the driver streams the image in pieces): the driver tells the core it
is still going (`report_snapshot`), and a transfer not heard of for
`snapshot_timeout` ticks is taken as lost and started again.

The whole log since the last snapshot is kept in memory: the application is
expected to compact regularly (`compact`), which bounds it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import Any, ClassVar

from chunkfs.common.errors import InternalError, InvalidArgument, ProtocolError

#: Node id meaning "nobody" (no vote, no known leader).
NONE = 0


#: A commit needs a quorum, counting the leader: with three members, the leader and one follower.
#: The leader sends new entries at once only to the followers a commit needs; the others get
#: them once this many have gathered, or with the next heartbeat (HEARTBEAT_TICKS).  On two cores
#: shared by three metadata servers, a follower that appends, syncs and acknowledges every change
#: though no commit waits for it took CPU and disk from those that did: creates through the mount
#: went 13 % faster without it one at a time, 10 % with four processes (BENCHMARKS.md).  Safety does not depend on
#: it (a leader may send when it likes); a follower the commits count on that goes silent costs
#: at most a tick or two before every follower is sent everything again (`_choose_lazy`).
LAZY_BATCH = 32


class RaftSafetyError(InternalError):
    """A Raft safety rule was found broken (e.g. a leader overwrote a committed entry); stop, don't corrupt."""


# --------------------------------------------------------------------------- data


class EntryKind(IntEnum):
    """What an entry carries; CONFIG entries hold the full new voter set."""

    NORMAL = 0
    CONFIG = 1


def _get(d: Mapping[str, Any], key: str, typ: type | tuple[type, ...]) -> Any:
    """Fetch a typed field from a decoded dict, refusing anything else.

    Messages come off the network: a wrong type must be a clean ProtocolError,
    never an exception deep inside the state machine.
    """
    try:
        value = d[key]
    except (KeyError, TypeError) as exc:
        raise ProtocolError(f"raft message lacks field {key!r}") from exc
    if typ is int and isinstance(value, bool):
        raise ProtocolError(f"raft field {key!r} must be an int")
    if not isinstance(value, typ):
        raise ProtocolError(f"raft field {key!r} has type {type(value).__name__}")
    return value


#: Terms and indexes are kept in signed 64-bit SQLite integers: a larger one from the wire (a
#: hostile-peer probe: a term of 2**64-1) stopped every metadata server when it was stored.
UINT_MAX = 2**63 - 1
#: How far beyond its own term a member takes a peer's: elections come a second apart at most,
#: so no member is 2**32 terms (136 years of elections) ahead of another.
TERM_LEAP_MAX = 2**32


def _uint(d: Mapping[str, Any], key: str) -> int:
    value = _get(d, key, int)
    if not 0 <= value <= UINT_MAX:
        raise ProtocolError(f"raft field {key!r} is out of range")
    return value


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry.  `data` is opaque to Raft except for CONFIG entries."""

    term: int
    index: int
    kind: int = EntryKind.NORMAL
    data: bytes = b""

    def to_dict(self) -> dict[str, Any]:
        return {"term": self.term, "index": self.index, "kind": int(self.kind), "data": self.data}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Entry:
        kind = _uint(d, "kind")
        if kind not in (EntryKind.NORMAL, EntryKind.CONFIG):
            raise ProtocolError(f"unknown raft entry kind {kind}")
        return cls(_uint(d, "term"), _uint(d, "index"), EntryKind(kind), bytes(_get(d, "data", bytes)))


def encode_voters(voters: Iterable[int]) -> bytes:
    """Encode a voter set as the data of a CONFIG entry (plain ASCII, sorted)."""
    return ",".join(str(v) for v in sorted(set(voters))).encode()


def decode_voters(data: bytes) -> frozenset[int]:
    if not data:
        return frozenset()
    try:
        return frozenset(int(x) for x in data.decode().split(","))
    except ValueError as exc:
        raise ProtocolError("malformed raft configuration entry") from exc


@dataclass(frozen=True, slots=True)
class Snapshot:
    """State machine image up to `index`, with the configuration in force there.

    A node is bootstrapped from `Snapshot.initial(voters)`: index 0, term 0.
    A node joining an existing group starts from `Snapshot.initial(())` and
    will not campaign until it learns a configuration that contains it.
    """

    index: int
    term: int
    voters: tuple[int, ...]
    data: bytes = b""

    @classmethod
    def initial(cls, voters: Iterable[int]) -> Snapshot:
        return cls(0, 0, tuple(sorted(set(voters))), b"")

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "term": self.term, "voters": list(self.voters), "data": self.data}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Snapshot:
        voters = _get(d, "voters", (list, tuple))
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in voters):
            raise ProtocolError("raft snapshot voters must be positive ints")
        return cls(_uint(d, "index"), _uint(d, "term"), tuple(voters), bytes(_get(d, "data", bytes)))


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be on disk before any message that depends on it leaves."""

    term: int = 0
    vote: int = NONE
    commit: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"term": self.term, "vote": self.vote, "commit": self.commit}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HardState:
        return cls(_uint(d, "term"), _uint(d, "vote"), _uint(d, "commit"))


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read point: serve `ctx` once the state machine has applied `index`."""

    index: int
    ctx: bytes


# ----------------------------------------------------------------------- messages


class _Codec:
    """to_dict/from_dict for every message class (the wire protocol msgpack-encodes the dict)."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        return message_to_dict(self)  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Message:
        msg = message_from_dict(d)
        if not isinstance(msg, cls):
            raise ProtocolError(f"expected a {cls.__name__}, got {type(msg).__name__}")
        return msg


@dataclass(frozen=True, slots=True)
class VoteRequest(_Codec):
    """RequestVote, or PreVote when `pre_vote` (term is then the *prospective* term)."""

    TYPE: ClassVar[str] = "vote"
    src: int
    dst: int
    term: int
    last_index: int
    last_term: int
    pre_vote: bool = False
    #: Set for an election started by leadership transfer: voters skip the lease check.
    transfer: bool = False


@dataclass(frozen=True, slots=True)
class VoteResponse(_Codec):
    TYPE: ClassVar[str] = "vote_resp"
    src: int
    dst: int
    term: int
    granted: bool
    pre_vote: bool = False


@dataclass(frozen=True, slots=True)
class AppendRequest(_Codec):
    """AppendEntries; with no entries it is the heartbeat.

    `seq` is the leader's heartbeat round number, echoed in the response: a
    response carrying seq >= s proves the follower still accepted this leader
    after read request s was registered (ReadIndex).
    """

    TYPE: ClassVar[str] = "append"
    src: int
    dst: int
    term: int
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    commit: int
    seq: int = 0


@dataclass(frozen=True, slots=True)
class AppendResponse(_Codec):
    """Reply to AppendRequest and to SnapshotRequest.

    On success `index` is the last index known to match the leader.  On
    rejection `index` is the rejected prev_index and `hint` the index after
    which the leader should retry (an optimisation only; safety never rests on it).
    """

    TYPE: ClassVar[str] = "append_resp"
    src: int
    dst: int
    term: int
    success: bool
    index: int
    hint: int = 0
    seq: int = 0


@dataclass(frozen=True, slots=True)
class SnapshotRequest(_Codec):
    """InstallSnapshot, sent when the follower needs entries the leader compacted away."""

    TYPE: ClassVar[str] = "snapshot"
    src: int
    dst: int
    term: int
    snapshot: Snapshot
    seq: int = 0


@dataclass(frozen=True, slots=True)
class TimeoutNow(_Codec):
    """Leadership transfer: the target campaigns at once, skipping pre-vote."""

    TYPE: ClassVar[str] = "timeout_now"
    src: int
    dst: int
    term: int


Message = VoteRequest | VoteResponse | AppendRequest | AppendResponse | SnapshotRequest | TimeoutNow
_MESSAGE_TYPES: dict[str, type] = {
    cls.TYPE: cls
    for cls in (VoteRequest, VoteResponse, AppendRequest, AppendResponse, SnapshotRequest, TimeoutNow)
}
_BOOL_FIELDS = frozenset({"pre_vote", "transfer", "granted", "success"})


def message_to_dict(msg: Message) -> dict[str, Any]:
    """Plain dict/list/int/bool/bytes form of a message, ready for msgpack."""
    out: dict[str, Any] = {"type": msg.TYPE}
    for name in msg.__slots__:  # type: ignore[union-attr]
        value = getattr(msg, name)
        if name == "entries":
            value = [e.to_dict() for e in value]
        elif name == "snapshot":
            value = value.to_dict()
        out[name] = value
    return out


def message_from_dict(d: Mapping[str, Any]) -> Message:
    """Validate and rebuild a message; anything malformed raises ProtocolError."""
    if not isinstance(d, Mapping):
        raise ProtocolError("raft message must be a map")
    cls = _MESSAGE_TYPES.get(_get(d, "type", str))
    if cls is None:
        raise ProtocolError(f"unknown raft message type {d.get('type')!r}")
    kwargs: dict[str, Any] = {}
    for name in cls.__slots__:
        if name == "entries":
            kwargs[name] = tuple(Entry.from_dict(e) for e in _get(d, name, (list, tuple)))
        elif name == "snapshot":
            kwargs[name] = Snapshot.from_dict(_get(d, name, Mapping))
        elif name in _BOOL_FIELDS:
            kwargs[name] = _get(d, name, bool)
        else:
            kwargs[name] = _uint(d, name)
    return cls(**kwargs)


# -------------------------------------------------------------------------- ready


@dataclass(slots=True)
class Ready:
    """Everything the driver must do, in order: persist, send, apply, serve reads."""

    hard_state: HardState | None = None
    #: A snapshot received from the leader: persist it (replacing the log) and restore the state machine.
    snapshot: Snapshot | None = None
    #: Entries to append; any stored entries at index >= entries[0].index must be discarded first.
    entries: list[Entry] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    committed_entries: list[Entry] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    #: Contexts of read_index calls that will never complete (leadership lost): answer "not leader".
    failed_reads: list[bytes] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not (
            self.hard_state or self.snapshot or self.entries or self.messages
            or self.committed_entries or self.read_states or self.failed_reads
        )


# ---------------------------------------------------------------------------- log


class RaftLog:
    """The in-memory log: a snapshot followed by contiguous entries."""

    __slots__ = ("snapshot", "entries")

    def __init__(self, snapshot: Snapshot, entries: Iterable[Entry] = ()) -> None:
        self.snapshot = snapshot
        self.entries: list[Entry] = []
        expected = snapshot.index + 1
        for e in entries:
            if e.index <= snapshot.index:
                continue
            if e.index != expected:
                raise InvalidArgument(f"raft log is not contiguous at index {e.index}", index=e.index)
            self.entries.append(e)
            expected += 1

    @property
    def first_index(self) -> int:
        return self.snapshot.index + 1

    @property
    def last_index(self) -> int:
        return self.snapshot.index + len(self.entries)

    @property
    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.snapshot.term

    def term_at(self, index: int) -> int | None:
        """Term of the entry at `index`, or None if compacted away or beyond the end."""
        off = index - self.snapshot.index
        if off == 0:
            return self.snapshot.term
        if 0 < off <= len(self.entries):
            return self.entries[off - 1].term
        return None

    def entry(self, index: int) -> Entry:
        return self.entries[index - self.snapshot.index - 1]

    def slice(self, lo: int, hi: int) -> list[Entry]:
        """Entries lo..hi inclusive (clamped to what is present)."""
        base = self.snapshot.index + 1
        return self.entries[max(lo - base, 0): max(hi - base + 1, 0)]

    def truncate_from(self, index: int) -> None:
        del self.entries[index - self.snapshot.index - 1:]

    def compact(self, snapshot: Snapshot) -> None:
        del self.entries[: snapshot.index - self.snapshot.index]
        self.snapshot = snapshot

    def restore(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.entries = []


# --------------------------------------------------------------------------- core


class Role(Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(slots=True)
class Progress:
    """The leader's view of one follower."""

    match: int = 0
    next: int = 1
    recent_active: bool = True
    #: Leader ticks since this follower last answered (a large number: not heard from since this leader began).
    silent_ticks: int = 1 << 30
    #: Index of the snapshot in flight to this follower (0: none): the snapshot state.
    snapshot: int = 0
    #: Ticks since the driver last reported that transfer alive.
    snapshot_idle: int = 0


@dataclass(slots=True)
class _PendingRead:
    ctx: bytes
    index: int
    seq: int
    acks: set[int]


class RaftCore:
    """One Raft member.  Not thread-safe; the driver serialises all calls.

    Restart by passing what storage recovered: `hard_state`, `snapshot` and
    `entries`, plus `applied` if the state machine is durable on its own
    (otherwise it is rebuilt from the snapshot and re-applied from there).
    """

    def __init__(
        self,
        node_id: int,
        *,
        rng: random.Random,
        snapshot: Snapshot,
        hard_state: HardState | None = None,
        entries: Iterable[Entry] = (),
        applied: int | None = None,
        election_timeout: int = 10,
        heartbeat_timeout: int = 1,
        pre_vote: bool = True,
        check_quorum: bool = True,
        max_entries_per_msg: int = 64,
        start_quiet: bool = False,
        snapshot_timeout: int = 0,
        lazy_batch: int = LAZY_BATCH,
    ) -> None:
        if node_id <= NONE:
            raise InvalidArgument("raft node id must be positive", node_id=node_id)
        if heartbeat_timeout < 1 or election_timeout <= heartbeat_timeout:
            raise InvalidArgument("raft needs 1 <= heartbeat_timeout < election_timeout")
        self.id = node_id
        self._rng = rng
        self.election_timeout = election_timeout
        self.heartbeat_timeout = heartbeat_timeout
        self.pre_vote = pre_vote
        self.check_quorum = check_quorum
        self.max_entries_per_msg = max_entries_per_msg
        #: Ticks without news of a snapshot transfer before it is sent again (default: 4 election timeouts).
        self.snapshot_timeout = snapshot_timeout or 4 * election_timeout
        #: See LAZY_BATCH; 0: every follower is sent new entries at once.
        self.lazy_batch = lazy_batch

        self.log = RaftLog(snapshot, entries)
        hs = hard_state or HardState()
        self.term = hs.term
        self.vote = hs.vote
        if self.log.last_term > self.term:
            # Entries reached disk but the hard state written after them did not:
            # no vote in the newer term was ever sent (votes are persisted first).
            self.term, self.vote = self.log.last_term, NONE
        self.commit = max(min(hs.commit, self.log.last_index), snapshot.index)
        self._applied = max(snapshot.index, min(applied if applied is not None else 0, self.commit))

        self.role = Role.FOLLOWER
        self.lead = NONE
        #: Messages dropped for a term beyond TERM_LEAP_MAX of ours.
        self.dropped_far_terms = 0
        self.voters: frozenset[int] = frozenset()
        self._config_index = 0
        self._recompute_config()

        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = self.election_timeout
        #: With `start_quiet`, a (re)started member grants no vote for one election timeout: it may have
        #: acknowledged a leader just before it went down, and that leader's read lease counts on it
        #: (driver.py).  Safety never depends on it; only lease reads do.
        self._quiet_ticks = self.election_timeout if start_quiet else 0
        self._votes: dict[int, bool] = {}
        self._progress: dict[int, Progress] = {}
        #: Members whose log lost entries they had acknowledged to this leader (see the driver).
        self.lost_logs: set[int] = set()
        self._pending_conf_index = 0
        #: The leader's followers that get new entries in batches (`_choose_lazy`).
        self._lazy: frozenset[int] = frozenset()
        #: The leader's last index at the previous tick: older entries should be committed by now.
        self._tick_mark = 0
        self._transferee = NONE
        self._transfer_elapsed = 0
        self._seq = 0
        self._pending_reads: list[_PendingRead] = []
        self._reads_awaiting_commit: list[bytes] = []
        self._confirmed_reads: list[ReadState] = []

        # Outputs, drained by ready().
        self._msgs: list[Message] = []
        #: The leader appended entries its followers have not been sent yet (see `_append_as_leader`).
        self._append_unsent = False
        self._failed_reads: list[bytes] = []
        self._unstable_from = self.log.last_index + 1
        self._pending_snapshot: Snapshot | None = None
        self._persisted_hs = HardState(hs.term, hs.vote, hs.commit)
        self._reset_randomized_timeout()

    # ------------------------------------------------------------ properties

    @property
    def is_leader(self) -> bool:
        return self.role is Role.LEADER

    @property
    def leader_id(self) -> int:
        """Best known leader (NONE if unknown): the hint for redirecting clients."""
        return self.lead

    @property
    def last_index(self) -> int:
        return self.log.last_index

    @property
    def applied(self) -> int:
        """Highest index handed to the application in committed_entries (or a snapshot)."""
        return self._applied

    @property
    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.commit)

    def match_indexes(self) -> dict[int, int]:
        """The leader's view of how far each voter's log matches its own (empty on followers)."""
        if self.role is not Role.LEADER:
            return {}
        return {peer: (self.log.last_index if peer == self.id else pr.match) for peer, pr in self._progress.items()}

    def answering_voters(self) -> frozenset[int]:
        """The leader and the voters that answered it within the last election timeout (empty on followers).

        What a membership change must leave a majority of, or no master could be elected after it.
        """
        if self.role is not Role.LEADER:
            return frozenset()
        return frozenset(v for v in self.voters if v == self.id or (
            v in self._progress and self._progress[v].silent_ticks < self.election_timeout))

    @property
    def quorum(self) -> int:
        return len(self.voters) // 2 + 1

    def promotable(self) -> bool:
        """Only a voter of its own latest configuration may campaign."""
        return self.id in self.voters

    # ---------------------------------------------------------------- inputs

    def tick(self) -> None:
        """Advance logical time by one tick (the driver calls it every N ms)."""
        if self._quiet_ticks:
            self._quiet_ticks -= 1
        if self.role is Role.LEADER:
            self._tick_leader()
            return
        self._election_elapsed += 1
        if self.promotable() and self._election_elapsed >= self._randomized_timeout:
            self._election_elapsed = 0
            self.campaign()

    def campaign(self) -> None:
        """Start an election now (pre-vote first when enabled), as etcd's MsgHup."""
        if self.role is Role.LEADER or not self.promotable():
            return
        self._campaign(pre=self.pre_vote, transfer=False)

    def propose(self, data: bytes) -> int | None:
        """Append a normal entry; returns its index, or None if not the leader (redirect)."""
        if self.role is not Role.LEADER or self._transferee != NONE:
            return None
        return self._append_as_leader(EntryKind.NORMAL, bytes(data))

    def propose_conf_change(self, add: int = NONE, remove: int = NONE) -> int | None:
        """Add or remove one voter; returns the CONFIG entry's index, or None if refused.

        Refused (None) when not leader, during a transfer, when a previous
        change is not yet committed, or before the leader has committed an
        entry of its own term (the fix to single-server changes from the
        Raft mailing list, 2015) — the caller retries later.
        """
        if (add == NONE) == (remove == NONE):
            raise InvalidArgument("give exactly one of add= or remove=")
        if self.role is not Role.LEADER or self._transferee != NONE:
            return None
        if self._pending_conf_index > self.commit or self.log.term_at(self.commit) != self.term:
            return None
        voters = set(self.voters)
        if add != NONE:
            if add in voters:
                return None
            voters.add(add)
        else:
            if remove not in voters or len(voters) == 1:
                return None
            voters.discard(remove)
        return self._append_as_leader(EntryKind.CONFIG, encode_voters(voters))

    def read_index(self, ctx: bytes) -> bool:
        """Ask for a linearizable read point; the answer arrives as a ReadState.

        Returns False at once if not the leader.  The leader takes its commit
        index, then proves it is still leader by a heartbeat round acknowledged
        by a quorum; only then is the ReadState released (once applied >= it).
        A leader that has not yet committed an entry of its term waits for that
        first, since until then its commit index may lag the true one.
        """
        if self.role is not Role.LEADER:
            return False
        ctx = bytes(ctx)
        if self.log.term_at(self.commit) != self.term:
            self._reads_awaiting_commit.append(ctx)
            return True
        self._register_read(ctx)
        return True

    @property
    def transferring(self) -> bool:
        """A leadership transfer is under way (its target may be elected without waiting for leases)."""
        return self._transferee != NONE

    def transfer_leadership(self, to: int) -> bool:
        """Hand leadership to `to` once its log is caught up (thesis section 3.10)."""
        if self.role is not Role.LEADER or to == self.id or to not in self._progress:
            return False
        self._transferee = to
        self._transfer_elapsed = 0  # the transfer is abandoned after one election timeout
        pr = self._progress[to]
        if pr.match == self.log.last_index:
            self._send(TimeoutNow(self.id, to, self.term))
        else:
            self._send_append(to)
        return True

    def report_unreachable(self, peer: int) -> None:
        """The driver's news that `peer` cannot be reached now (its connection is gone).

        A follower the commits counted on: the lazy ones are sent everything at once, instead of
        a tick or two later when the commits are found stalled (a killed process closes its
        connections at once; a frozen or cut-off one is still found by the stall).
        """
        if self.role is Role.LEADER and self._lazy and peer in self._progress and peer not in self._lazy:
            self._wake_lazy()

    def take_lost_logs(self) -> set[int]:
        """Members found to have lost entries they acknowledged (once each time it is found)."""
        lost, self.lost_logs = self.lost_logs, set()
        return lost

    def report_snapshot(self, peer: int, *, failed: bool) -> None:
        """The driver's news of the snapshot it is sending to `peer`.

        Still going (`failed=False`): its deadline starts again.  Failed: the
        follower leaves the snapshot state, and the next heartbeat sends the
        snapshot again (the driver resumes where the follower got to).
        """
        pr = self._progress.get(peer) if self.role is Role.LEADER else None
        if pr is None or not pr.snapshot:
            return
        if failed:
            pr.snapshot = 0
            pr.next = pr.match + 1
        else:
            pr.snapshot_idle = 0

    def compact(self, index: int, data: bytes) -> Snapshot:
        """The application saved its state up to `index`: drop the log before it.

        Returns the Snapshot for the driver to persist (`LogStorage.compact`).
        """
        if not (self.log.snapshot.index < index <= self._applied) or index >= self._unstable_from:
            raise InvalidArgument(
                f"cannot compact at {index}: snapshot={self.log.snapshot.index} applied={self._applied}",
                index=index,
            )
        term = self.log.term_at(index)
        assert term is not None
        snap = Snapshot(index, term, tuple(sorted(self._voters_at(index))), bytes(data))
        self.log.compact(snap)
        return snap

    def step(self, m: Message) -> None:
        """Handle one message from a peer."""
        if m.dst != self.id:
            return
        if m.term > self.term + TERM_LEAP_MAX:
            # Not a term any member reached by elections: dropped, as a lost message is (always safe).
            # Taken, one message of a peer holding the secret moved every member to 2**63-1, where
            # no election could follow (a hostile-peer probe: no master, for good).
            self.dropped_far_terms += 1
            return
        if m.term > self.term:
            if isinstance(m, VoteRequest):
                in_lease = self.check_quorum and not m.transfer and (
                    (self.lead != NONE and self._election_elapsed < self.election_timeout) or self._quiet_ticks > 0
                )
                if in_lease:
                    # Leader lease: we heard from a live leader recently, so a
                    # candidate (often a rejoining, disrupted node) is ignored.
                    return
            if isinstance(m, VoteRequest) and m.pre_vote:
                pass  # a pre-vote never changes our term
            elif isinstance(m, VoteResponse) and m.pre_vote and m.granted:
                pass  # granted pre-votes carry the prospective term
            elif isinstance(m, (AppendRequest, SnapshotRequest)):
                self._become_follower(m.term, m.src)
            else:
                self._become_follower(m.term, NONE)
        elif m.term < self.term:
            if isinstance(m, (AppendRequest, SnapshotRequest)) and (self.check_quorum or self.pre_vote):
                # A stale leader (e.g. healed partition) learns the new term and steps down.
                self._send(AppendResponse(self.id, m.src, self.term, False, 0))
            elif isinstance(m, VoteRequest) and m.pre_vote:
                self._send(VoteResponse(self.id, m.src, self.term, False, pre_vote=True))
            return

        if isinstance(m, VoteRequest):
            self._handle_vote_request(m)
        elif isinstance(m, VoteResponse):
            self._handle_vote_response(m)
        elif isinstance(m, AppendRequest):
            if self.role is Role.LEADER:
                return  # impossible under election safety: two leaders in one term
            if self.role is not Role.FOLLOWER or self.lead != m.src:
                self._become_follower(self.term, m.src)
            self._handle_append(m)
        elif isinstance(m, SnapshotRequest):
            if self.role is Role.LEADER:
                return
            if self.role is not Role.FOLLOWER or self.lead != m.src:
                self._become_follower(self.term, m.src)
            self._handle_snapshot(m)
        elif isinstance(m, AppendResponse):
            if self.role is Role.LEADER:
                self._handle_append_response(m)
        elif isinstance(m, TimeoutNow):
            if self.role is not Role.LEADER and self.promotable():
                self._campaign(pre=False, transfer=True)

    # ----------------------------------------------------------------- ready

    def has_ready(self) -> bool:
        return bool(
            self._msgs or self._append_unsent or self._pending_snapshot or self._unstable_from <= self.log.last_index
            or self.hard_state != self._persisted_hs or self.commit > self._applied
            or self._failed_reads or self._releasable_reads()
        )

    def ready(self) -> Ready:
        """Drain the outputs.  The driver must persist, then send, then apply, then call advance()."""
        rd = Ready()
        if self._append_unsent:
            self._append_unsent = False
            if self.role is Role.LEADER:
                for peer, pr in self._progress.items():
                    if not self._held_back(peer, pr):
                        self._send_append(peer)  # (also to a voter just added: it hears at once)
        hs = self.hard_state
        if hs != self._persisted_hs:
            rd.hard_state = hs
            self._persisted_hs = hs
        if self._pending_snapshot is not None:
            rd.snapshot = self._pending_snapshot
            self._pending_snapshot = None
        if self._unstable_from <= self.log.last_index:
            rd.entries = self.log.slice(self._unstable_from, self.log.last_index)
        self._unstable_from = self.log.last_index + 1
        rd.messages, self._msgs = self._msgs, []
        if self.commit > self._applied:
            rd.committed_entries = self.log.slice(self._applied + 1, self.commit)
            self._applied = self.commit
        rd.read_states = self._releasable_reads()
        if rd.read_states:
            self._confirmed_reads = self._confirmed_reads[len(rd.read_states):]
        rd.failed_reads, self._failed_reads = self._failed_reads, []
        return rd

    def advance(self, rd: Ready | None = None) -> None:
        """The driver has persisted, sent and applied `rd`.

        Bookkeeping happens in ready() already (so a crash before advance()
        simply loses what the driver did not persist); this exists so that
        drivers keep etcd's ready/advance rhythm, and for future flow control.
        """

    def _releasable_reads(self) -> list[ReadState]:
        out = []
        for rs in self._confirmed_reads:
            if rs.index > max(self._applied, self.commit):
                break
            out.append(rs)
        return out

    # --------------------------------------------------------------- internals

    def _send(self, m: Message) -> None:
        self._msgs.append(m)

    def _reset_randomized_timeout(self) -> None:
        self._randomized_timeout = self.election_timeout + self._rng.randrange(self.election_timeout)

    def _become_follower(self, term: int, lead: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = NONE
        self._reset_role(Role.FOLLOWER)
        self.lead = lead

    def _reset_role(self, role: Role) -> None:
        if self.role is Role.LEADER and role is not Role.LEADER:
            self._failed_reads.extend(r.ctx for r in self._pending_reads)
            self._failed_reads.extend(self._reads_awaiting_commit)
            self._pending_reads = []
            self._reads_awaiting_commit = []
            self._progress = {}
            self._transferee = NONE
        self.role = role
        self.lead = NONE
        self._votes = {}
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._reset_randomized_timeout()

    def _campaign(self, *, pre: bool, transfer: bool) -> None:
        if pre:
            self._reset_role(Role.PRE_CANDIDATE)
            term = self.term + 1
        else:
            self._reset_role(Role.CANDIDATE)
            self.term += 1
            self.vote = self.id
            term = self.term
        self._votes[self.id] = True
        if self._poll() == 1:
            return
        for peer in sorted(self.voters):
            if peer != self.id:
                self._send(VoteRequest(
                    self.id, peer, term, self.log.last_index, self.log.last_term, pre_vote=pre,
                    transfer=transfer,
                ))

    def _poll(self) -> int:
        """1 = won, -1 = lost, 0 = undecided; acts on the outcome."""
        granted = sum(1 for v in self.voters if self._votes.get(v) is True)
        rejected = sum(1 for v in self.voters if self._votes.get(v) is False)
        if granted >= self.quorum:
            if self.role is Role.PRE_CANDIDATE:
                self._campaign(pre=False, transfer=False)
            else:
                self._become_leader()
            return 1
        if rejected >= self.quorum:
            self._become_follower(self.term, NONE)
            return -1
        return 0

    def _can_vote(self, m: VoteRequest) -> bool:
        """Would we grant this candidate our vote, logs aside?  (Overridden by the planted-bug test.)"""
        if m.pre_vote:
            return m.term > self.term or self.vote == m.src or (self.vote == NONE and self.lead == NONE)
        return self.vote == m.src or (self.vote == NONE and self.lead == NONE)

    def _handle_vote_request(self, m: VoteRequest) -> None:
        up_to_date = (m.last_term, m.last_index) >= (self.log.last_term, self.log.last_index)
        if up_to_date and self._can_vote(m):
            self._send(VoteResponse(self.id, m.src, m.term if m.pre_vote else self.term, True, m.pre_vote))
            if not m.pre_vote:
                self.vote = m.src
                self._election_elapsed = 0
        else:
            self._send(VoteResponse(self.id, m.src, self.term, False, m.pre_vote))
            if (m.pre_vote and not up_to_date and self.check_quorum and self.role is Role.FOLLOWER
                    and self.promotable() and self._election_elapsed >= self.election_timeout):
                # The candidate's log is behind ours, and we too have not heard from a leader for an
                # election timeout: the one who can win campaigns now instead of at its own timeout.
                # (A lazy follower, LAZY_BATCH, is often the one that times out first, and a campaign
                # is always safe.)
                self.campaign()

    def _handle_vote_response(self, m: VoteResponse) -> None:
        if self.role is Role.PRE_CANDIDATE and m.pre_vote:
            self._votes.setdefault(m.src, m.granted)
            self._poll()
        elif self.role is Role.CANDIDATE and not m.pre_vote and m.term == self.term:
            self._votes.setdefault(m.src, m.granted)
            self._poll()

    def _become_leader(self) -> None:
        self._reset_role(Role.LEADER)
        self.lead = self.id
        last = self.log.last_index
        self._progress = {p: Progress(0, last + 1) for p in self.voters if p != self.id}
        self._lazy = frozenset()
        # An empty entry of our term: committing it commits everything before it
        # (Raft section 5.4.2) and unblocks reads and configuration changes.
        self._pending_conf_index = last + 1
        self._append_as_leader(EntryKind.NORMAL, b"")
        self._tick_mark = self.log.last_index

    def _append_as_leader(self, kind: EntryKind, data: bytes) -> int:
        index = self.log.last_index + 1
        self.log.entries.append(Entry(self.term, index, kind, data))
        if kind == EntryKind.CONFIG:
            self._pending_conf_index = index
            self._set_voters(decode_voters(data), index)
        self._maybe_commit()
        # Sent at the next ready(): the entries proposed meanwhile go to each follower in one
        # message, acknowledged by one (a message per proposal made a send, a wake-up and an
        # acknowledgement per follower for each of them, with several clients at once).
        self._append_unsent = True
        return index

    def _set_voters(self, voters: frozenset[int], index: int) -> None:
        self.voters = voters
        self._config_index = index
        self._lazy = frozenset()  # a quorum of other members: chosen again at the next tick
        if self.role is Role.LEADER:
            for p in voters:
                if p != self.id and p not in self._progress:
                    self._progress[p] = Progress(0, self.log.last_index + 1)
            for p in list(self._progress):
                if p not in voters:
                    del self._progress[p]
                    if self._transferee == p:
                        self._transferee = NONE

    def _voters_at(self, index: int) -> frozenset[int]:
        for i in range(min(index, self.log.last_index), self.log.snapshot.index, -1):
            e = self.log.entry(i)
            if e.kind == EntryKind.CONFIG:
                return decode_voters(e.data)
        return frozenset(self.log.snapshot.voters)

    def _recompute_config(self) -> None:
        for i in range(self.log.last_index, self.log.snapshot.index, -1):
            e = self.log.entry(i)
            if e.kind == EntryKind.CONFIG:
                self._set_voters(decode_voters(e.data), i)
                return
        self._set_voters(frozenset(self.log.snapshot.voters), self.log.snapshot.index)

    def _send_append(self, peer: int, *, heartbeat: bool = False) -> None:
        pr = self._progress[peer]
        if pr.snapshot:
            if heartbeat:
                # Keep it from campaigning, and let it acknowledge reads: prev 0 matches any log,
                # and the commit sent is one it holds (it changes nothing there).
                self._send(AppendRequest(self.id, peer, self.term, 0, 0, (), min(self.commit, pr.match), self._seq))
            return
        prev = pr.next - 1
        prev_term = self.log.term_at(prev)
        if prev_term is None or prev < self.log.snapshot.index:
            if prev > self.log.last_index:  # should not happen; repair rather than crash
                pr.next = self.log.last_index + 1
                self._send_append(peer)
                return
            snap = self.log.snapshot
            self._send(SnapshotRequest(self.id, peer, self.term, snap, self._seq))
            pr.next = snap.index + 1
            pr.snapshot, pr.snapshot_idle = snap.index, 0
            return
        entries = tuple(self.log.slice(pr.next, min(self.log.last_index, pr.next + self.max_entries_per_msg - 1)))
        self._send(AppendRequest(self.id, peer, self.term, prev, prev_term, entries, self.commit, self._seq))
        if entries:
            pr.next = entries[-1].index + 1  # optimistic; heartbeats retransmit what is unacked

    def _broadcast_heartbeat(self) -> None:
        for peer, pr in self._progress.items():
            if pr.match < self.log.last_index and not pr.snapshot:
                pr.next = min(pr.next, pr.match + 1)  # retransmit anything lost
            self._send_append(peer, heartbeat=True)

    def _tick_leader(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        self._transfer_elapsed += 1
        if self._transferee != NONE and self._transfer_elapsed >= self.election_timeout:
            self._transferee = NONE
        if self._election_elapsed >= self.election_timeout:
            self._election_elapsed = 0
            if self.check_quorum:
                active = sum(
                    1 for v in self.voters
                    if v == self.id or (v in self._progress and self._progress[v].recent_active)
                )
                if active < self.quorum:
                    # We may be on the minority side of a partition: stop acting as
                    # leader, so clients go elsewhere and our lease-based vote refusal ends.
                    self._become_follower(self.term, NONE)
                    return
                for pr in self._progress.values():
                    pr.recent_active = False
        for pr in self._progress.values():
            pr.silent_ticks += 1
            if pr.snapshot:
                pr.snapshot_idle += 1
                if pr.snapshot_idle >= self.snapshot_timeout:
                    pr.snapshot = 0  # lost on the way: the heartbeat below sends it again
                    pr.next = pr.match + 1
        self._choose_lazy()
        if self._heartbeat_elapsed >= self.heartbeat_timeout:
            self._heartbeat_elapsed = 0
            self._broadcast_heartbeat()

    def _choose_lazy(self) -> None:
        """Once a tick: which followers get new entries only in batches (see LAZY_BATCH).

        Entries a whole tick old and still not committed mean that a follower the commits count
        on is slow or gone: every follower is sent everything at once again, the lazy ones at
        once.  Otherwise, when none is lazy, the followers beyond those a quorum needs, the
        furthest behind, become lazy (a follower gone stops acknowledging, so it is the one
        chosen once the others have committed without it).
        """
        stalled = self.commit < self._tick_mark
        self._tick_mark = self.log.last_index
        if self.lazy_batch <= 0:
            return
        if stalled:
            self._wake_lazy()
            return
        if self._lazy:
            return
        followers = [p for p in self._progress if p in self.voters]
        needed = self.quorum - (1 if self.id in self.voters else 0)
        if len(followers) > needed:
            ranked = sorted(followers, key=lambda p: (-self._progress[p].match, p))
            self._lazy = frozenset(ranked[needed:])

    def _wake_lazy(self) -> None:
        """Every follower gets new entries at once again; the lazy ones are sent what they lack now."""
        woken, self._lazy = self._lazy, frozenset()
        for peer in woken:
            if peer in self._progress:
                self._send_append(peer)

    def _held_back(self, peer: int, pr: Progress) -> bool:
        """A lazy follower waits for a batch of new entries (or the next heartbeat)."""
        return (peer in self._lazy and peer != self._transferee
                and self.log.last_index - pr.next + 1 < self.lazy_batch)

    def _handle_append(self, m: AppendRequest) -> None:
        self._election_elapsed = 0
        if m.prev_index < self.commit:
            # Our committed prefix matches any leader's (leader completeness).
            self._send(AppendResponse(self.id, m.src, self.term, True, self.commit, seq=m.seq))
            return
        prev_term = self.log.term_at(m.prev_index)
        if prev_term != m.prev_term:
            if prev_term is None:
                hint = self.log.last_index
            else:
                i = m.prev_index
                while i - 1 > self.commit and self.log.term_at(i - 1) == prev_term:
                    i -= 1
                hint = i - 1
            self._send(AppendResponse(self.id, m.src, self.term, False, m.prev_index, hint, m.seq))
            return
        for k, e in enumerate(m.entries):
            t = self.log.term_at(e.index)
            if t == e.term:
                continue
            if t is not None:
                if e.index <= self.commit:
                    raise RaftSafetyError(
                        f"node {self.id}: leader {m.src} overwrites committed entry {e.index}",
                        index=e.index, term=self.term,
                    )
                self._truncate_from(e.index)
            self._append_entries(m.entries[k:])
            break
        last_new = m.prev_index + len(m.entries)
        if m.commit > self.commit:
            self.commit = max(self.commit, min(m.commit, last_new))
        self._send(AppendResponse(self.id, m.src, self.term, True, last_new, seq=m.seq))

    def _truncate_from(self, index: int) -> None:
        self.log.truncate_from(index)
        self._unstable_from = min(self._unstable_from, index)
        if self._config_index >= index:
            self._recompute_config()

    def _append_entries(self, entries: Iterable[Entry]) -> None:
        for e in entries:
            self.log.entries.append(e)
            if e.kind == EntryKind.CONFIG:
                self._set_voters(decode_voters(e.data), e.index)

    def _handle_snapshot(self, m: SnapshotRequest) -> None:
        self._election_elapsed = 0
        s = m.snapshot
        if s.index <= self.commit:
            self._send(AppendResponse(self.id, m.src, self.term, True, self.commit, seq=m.seq))
            return
        if self.log.term_at(s.index) == s.term:
            # We hold that entry already, hence (log matching) the whole prefix.
            self.commit = s.index
        else:
            self.log.restore(s)
            self.commit = s.index
            self._applied = s.index
            self._pending_snapshot = s
            self._unstable_from = s.index + 1
            self._recompute_config()
        self._send(AppendResponse(self.id, m.src, self.term, True, s.index, seq=m.seq))

    def _commit_allowed(self, index: int) -> bool:
        """Raft section 5.4.2: only entries of the current term are committed by counting.

        (Overridden by the planted-bug test, which reproduces Figure 8.)
        """
        return self.log.term_at(index) == self.term

    def _maybe_commit(self) -> None:
        matches = [self._progress[v].match for v in self.voters if v in self._progress]
        if self.id in self.voters:
            matches.append(self.log.last_index)
        if len(matches) < self.quorum:
            return
        matches.sort(reverse=True)
        index = matches[self.quorum - 1]
        if index <= self.commit or not self._commit_allowed(index):
            return
        self.commit = index
        if self._reads_awaiting_commit and self.log.term_at(self.commit) == self.term:
            waiting, self._reads_awaiting_commit = self._reads_awaiting_commit, []
            for ctx in waiting:
                self._register_read(ctx)
        if self.id not in self.voters and self._config_index <= self.commit:
            # Our removal is committed: step down (thesis section 4.2.2).
            self._become_follower(self.term, NONE)

    def _register_read(self, ctx: bytes) -> None:
        others = [v for v in self.voters if v != self.id]
        if self.id in self.voters and not others:
            self._confirmed_reads.append(ReadState(self.commit, ctx))
            return
        self._seq += 1
        self._pending_reads.append(_PendingRead(ctx, self.commit, self._seq, {self.id}))
        for peer in self._progress:
            self._send_append(peer, heartbeat=True)

    def _ack_reads(self, src: int, seq: int) -> None:
        confirmed = 0
        for k, r in enumerate(self._pending_reads):
            if r.seq > seq:
                break
            r.acks.add(src)
            if sum(1 for v in self.voters if v in r.acks) >= self.quorum:
                confirmed = k + 1
        if confirmed:
            for r in self._pending_reads[:confirmed]:
                self._confirmed_reads.append(ReadState(r.index, r.ctx))
            del self._pending_reads[:confirmed]

    def _handle_append_response(self, m: AppendResponse) -> None:
        pr = self._progress.get(m.src)
        if pr is None:
            return
        pr.recent_active = True
        pr.silent_ticks = 0
        if m.seq and self._pending_reads:
            self._ack_reads(m.src, m.seq)
        if pr.snapshot:
            if not (m.success and m.index >= pr.snapshot):
                if m.success and m.index > pr.match:
                    pr.match = m.index
                    self._maybe_commit()
                return  # the snapshot is still on its way
            pr.snapshot = 0  # installed (or not needed): replicate from there
        if m.success:
            if m.index > pr.match:
                pr.match = m.index
                self._maybe_commit()
                if self.role is not Role.LEADER:
                    return
            pr.next = max(pr.next, pr.match + 1)
            if self._transferee == m.src and pr.match == self.log.last_index:
                self._send(TimeoutNow(self.id, m.src, self.term))
            elif pr.next <= self.log.last_index and not self._held_back(m.src, pr):
                self._send_append(m.src)
        else:
            if m.index < pr.match:
                return  # stale rejection
            if m.hint < pr.match:
                # Its log ends before entries it acknowledged: it lost them (a wiped or restored data
                # directory). Raft counts on what a member acknowledged staying on its disk, so it is
                # not fed again from further back; only heartbeats go on, not a resend per refusal.
                self.lost_logs.add(m.src)
                return
            pr.next = max(pr.match + 1, min(m.hint + 1, m.index))
            self._send_append(m.src)


#: Factory signature used by the simulator to build cores (possibly a buggy subclass).
CoreFactory = Callable[..., RaftCore]
