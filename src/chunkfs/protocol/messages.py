"""Every message of every role, declared once.

Each message type has a number, the fields of its request header and the
fields of its response header.  `validate_request` / `validate_response` check
a decoded header against the declaration at the edge — before any handler sees
it — so a hostile peer cannot reach server code with a field of the wrong type,
an unknown field or a missing one.

Field types are deliberately few: int, str, bytes, bool, float, list, dict and
``None``-able variants.  Nested shapes (attributes, replica lists) are checked by
the handlers that use them through the small helpers at the bottom.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from chunkfs.common.errors import InvalidArgument, ProtocolError
from chunkfs.common.knobs import lowered

_NONE = type(None)


#: The most [chunk_id, version] pairs one frame carries (a page of CS_REGISTER or
#: CS_REPORT_REPLICAS), and so the most chunk ids one reply names for deletion.
#: A chunk server announces any number of replicas in pages of this size, so
#: nothing that grows with the data travels in one frame.  A worst-case pair (two
#: 64-bit integers) is 19 bytes of msgpack: a page is under 80 KiB, far below
#: MAX_HEADER_LEN and the receive buffer, and costs the master's event loop a
#: few milliseconds.  CHUNKFS_REPLICA_PAGE lowers it so tests exercise many pages.
REPLICA_PAGE = lowered("CHUNKFS_REPLICA_PAGE", 4096)


class Msg(enum.IntEnum):
    # Handshake (every connection, both directions authenticated).
    HELLO = 1
    PROOF = 2
    PING = 3
    # Server -> a peer it accepted: prove the cluster secret again (the one it proved was rotated out).
    REAUTH = 4
    # Client -> MDS: namespace.
    LOOKUP = 10
    GETATTR = 11
    RESOLVE = 12
    MKDIR = 13
    CREATE = 14
    READDIR = 15
    SETATTR = 16
    RENAME = 17
    UNLINK = 18
    RMDIR = 19
    SET_REPLICAS = 20
    OPEN = 21
    RELEASE = 22
    SYMLINK = 23
    SESSION = 24
    # Client -> MDS: tell this connection of other clients' changes; MDS -> client: what changed.
    WATCH = 25
    INVALIDATE = 26
    # Client -> MDS: chunks.
    CHUNK_READ = 30
    CHUNK_WRITE = 31
    EXTEND = 32
    REPORT_BAD_REPLICA = 33
    FILE_LEASE = 34
    # Anyone -> MDS: cluster state.
    CLUSTER_STAT = 40
    GET_EVENTS = 41
    # CS -> MDS.
    CS_REGISTER = 50
    CS_HEARTBEAT = 51
    CS_REPORT_REPLICAS = 52
    # MDS -> CS (over the link the CS opened).
    CS_CREATE_CHUNK = 60
    CS_SET_VERSION = 61
    CS_DELETE_CHUNKS = 62
    CS_TRUNCATE_CHUNK = 63
    CS_REPLICATE = 64
    CS_VERIFY_CHUNK = 65
    CS_REPAIR_BLOCKS = 66
    CS_FANNED = 67
    CS_TAKE_BLOCKS = 68
    # Client or CS -> CS: data.
    CS_READ = 70
    CS_WRITE = 71
    CS_FSYNC = 72
    CS_CHECKSUMS = 73
    CS_TRACK_WRITES = 74
    CS_WRITTEN_SINCE = 75
    CS_WRITE_CHUNKS = 76
    # Client -> CS: where this server keeps its replicas, for a mount on the same machine to read them.
    CS_LOCAL = 77
    # MDS <-> MDS and membership.
    RAFT = 80
    MDS_ADD = 81
    MDS_JOIN = 82
    MDS_REMOVE = 83
    RAFT_SNAPSHOT = 84
    # Anyone -> MDS: cluster settings and chunk-server removal (self-healing).
    GET_CONFIG = 90
    SET_CONFIG = 91
    RM_CS = 92
    SET_PLACEMENT = 93


#: The file in a chunk server's store folder that proves a mount sees that folder (CS_LOCAL).
LOCAL_MARK_FILE = "local-reads.mark"
#: The root directory's inode number (the same as FUSE's).
ROOT_INO = 1
#: Mounts renew their session every quarter of this, seconds.  The master keeps a silent
#: session much longer (the cluster setting ``session-timeout``: a stopped or cut-off mount
#: keeps the unlinked files it holds open).
SESSION_TTL = 10.0
#: An exclusive file lease lasts this long without renewal, seconds.  Holders renew
#: every quarter of it; a new master's grace period is this long.
LEASE_TTL = 10.0
#: A chunk server serves its replicas only while it holds a lease from a master, seconds: counted from
#: the sending of its last registration or heartbeat that a master answered as the master (the
#: answer's `lease`).  A master leaves a replica behind at an old version, and hands the new version
#: to writers, only once that server cannot serve the old one any more: told, or its lease run out
#: (mds/replica_leases.py).  Longer than a heartbeat's period and a master change take; shorter
#: than the wait that puts on a write losing a replica.
REPLICA_LEASE = 4.0
#: A mount reads a local chunk server's replica files itself for this long, seconds, after a request
#: it sent that server was answered (client/local_reads.py): a master waits this much longer too.
LOCAL_READ_LEASE = 0.5
#: A mount trusts what the kernel caches from it (pages of open files, names, attributes) for this
#: long, seconds, from the sending of its last WATCH that a master answered with `lease` (after a read
#: barrier: as the master): the notices that would have the kernel drop what another client changed
#: come only from the master, and one frozen or cut off sends none.  A new master serves clients' changes
#: only this long after it became the master (later than any mount's trust in an earlier master's
#: notices); the mount renews every quarter of it (client/fuse_ops.py `_keep_watch`).
WATCH_LEASE = 2.0
#: Inodes per SESSION message when a mount re-sends the files it holds open.
SESSION_OPEN_PAGE = 1000
#: Chunks one CS_DELETE_CHUNKS names at most.
DELETE_BATCH = 1024
#: The most names, and the most inodes, one INVALIDATE notice carries (one change touches at most 2 and 4).
INVALIDATE_MAX = 8
#: A write of at most this many bytes is *small*: the head of its chain sends it to every other replica
#: at once (one hop, not a chain of them), and a mount may send several of them as one CS_WRITE.
SMALL_WRITE_MAX = 128 << 10
#: A new chunk's first write of at most this many bytes may travel with the request that allocates the
#: chunk (CHUNK_WRITE's payload): the master has the new replicas made with those bytes already in them
#: (CS_CREATE_CHUNK's payload), instead of the writer sending them down the chain once the chunk exists.
FIRST_WRITE_MAX = 64 << 10
#: A new chunk's replicas made with its first write in them: named by a master in its answer to WATCH
#: and by a chunk server in its CS_REGISTER, so that neither is sent a first write by a peer that
#: assumes a version newer than its own (a mount before its master, a master before its servers).
FEATURE_FIRST_WRITE = "first_write"
#: A chunk server that cuts a replica and moves it to a new version in one step (CS_TRUNCATE_CHUNK's
#: `new_version`): named in its CS_REGISTER, so that a master sends the field only to servers that take it.
FEATURE_VERSIONED_CUT = "versioned_cut"
#: A chunk server that tells a master the chunks a writer lately wrote to it alone, as one of the replicas
#: it sent each write to itself (CS_FANNED): named in its CS_REGISTER, so that a master asks only servers
#: that take the message.  A new master mends those chunks' replicas (mds/fanned_mender.py).
FEATURE_FANNED_REPORT = "fanned_report"
#: A chunk server whose CS_FANNED also says how far writes lately reached into each chunk (`before` in the
#: request, `ends` in the answer): named in its CS_REGISTER.  A new master trims what a writer lost with
#: the last master wrote past a file's size (mds/open_files.py).
FEATURE_WRITTEN_REPORT = "written_report"
#: A chunk server that serves replicas only under a lease from the master (REPLICA_LEASE; `lease` in the
#: answers to its CS_REGISTER and CS_HEARTBEAT, and in its own answer to CS_LOCAL): named in its
#: CS_REGISTER, so that a master sends the field only to servers that take it.
FEATURE_LEASE = "lease"
#: A chunk server that takes a replica's blocks as they are on its disk (CS_TAKE_BLOCKS): named in its
#: CS_REGISTER, so that a master asks only servers that take the message.
FEATURE_TAKE_BLOCKS = "take_blocks"
#: A chunk server that counts the writes a writer sent each replica alone since it was made (CS_CHECKSUMS's
#: `fanned`): named in its CS_REGISTER, so that a master asks only servers that take the field.  The
#: comparison of a departed writer's replicas copies from the one that took the most (mds/fanned_mender.py).
FEATURE_FANNED_COUNTS = "fanned_counts"
#: How far back (seconds) such writes count, and how many chunks one answer names at most (the latest).
FANNED_REPORT_WINDOW = 600.0
FANNED_REPORT_MAX = 4096
#: A chunk's small writes sent by its one writer to every replica at once (mds/fan_grants.py): named by a
#: master in its answer to WATCH; a mount's CHUNK_WRITE then says it takes `fan` in the answer (an
#: earlier mount refuses the field, an earlier master the request's).
FEATURE_FAN = "fan"
#: A mount's OPEN or SETATTR of a file its kernel reached by a name it keeps carries that name
#: (`at`: [parent inode, name]), and the master refuses the request (NotFound) when the name no
#: longer leads to the file: another client renamed it away, and its notice to this mount is still on
#: its way.  Named by a master in its answer to WATCH (an earlier one refuses the field).
FEATURE_NAMED = "named"
#: A mount's RENAME may ask the master to hold the file it replaces (`session`, `hold`): named by a
#: master in its answer to WATCH (an earlier one refuses the fields, and the rename failed).
FEATURE_HOLD = "hold"
#: A mount's SESSION may ask whether the master listed its session (`ask_listed`): named by a master in
#: its answer to WATCH (an earlier one refuses the field).
FEATURE_LISTED = "listed"
#: A mount's RELEASE may name files it still holds, but only to read from now on (`read_only`: its last
#: descriptor that could write them was closed, with nothing left to commit): named by a master in its
#: answer to WATCH (an earlier one refuses the field).
FEATURE_READ_HOLDS = "read_holds"
#: A mount that takes an INVALIDATE's `cuts` (a file's new cut and size) says so in its WATCH
#: (`features`); only such a mount is sent the field, which a mount of an earlier version refuses.
FEATURE_CUTS = "cuts"
#: A mount that takes CHUNK_WRITE's `cut` (the file's last cut, read before the chunk the map names) says
#: so in its WATCH: a write it made through such a map came after every cut up to that one on the chunk
#: servers too (a cut moves or deletes the chunks it touches before it is answered), whenever the notice
#: of the cut reaches the mount.  Only such a mount is sent the field, which an earlier mount refuses.
FEATURE_MAP_CUTS = "map_cuts"
#: A mount that takes CHUNK_WRITE's `read` (the replicas to read the chunk from, when the master names
#: fewer than it writes to: a chunk still to be compared, or a server back from a power cut that has
#: not named its chunks yet; mds/fanned_mender.py `read_from`) says so in its WATCH: it then reads
#: through those, not through the map it writes with.  Only such a mount is sent the field.
FEATURE_WRITE_MAP_READS = "write_map_reads"
#: The most pieces one CS_WRITE carries (its `pieces`: [[offset, length], ...] of one chunk, in order),
#: and one CS_WRITE_CHUNKS over all its chunks.
WRITE_PIECES_MAX = 64


#: The most block numbers one message names (a chunk's blocks: 1,024 with the defaults).
MAX_BLOCKS = 65536

#: The range of every integer field: a signed 64-bit integer (what SQLite stores).
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@dataclass(slots=True, frozen=True)
class Field:
    name: str
    types: tuple[type, ...]
    optional: bool = False
    #: For a list: the most items it may hold (0: bounded only by the frame).
    max_items: int = 0
    #: For an integer: the largest value it may take (0: any up to INT64_MAX); such a field is never negative.
    at_most: int = 0


@dataclass(slots=True, frozen=True)
class MessageSpec:
    request: tuple[Field, ...]
    response: tuple[Field, ...]
    #: Whether a raw payload may follow the request header.
    request_payload: bool = False
    #: Whether it may be sent as a notice (`Kind.NOTICE`: no answer); the response fields are then unused.
    notice: bool = False


def f(name: str, *types: type, optional: bool = False, max_items: int = 0, at_most: int = 0) -> Field:
    return Field(name, types, optional, max_items, at_most)


#: A file mode: the type bits and the permission bits (a probe: MKDIR and SETATTR took -1, kept as 07777).
MODE_MAX = 0o177777


_ATTR = (f("attr", dict),)
#: The attributes of the directories a namespace change touched, as they are after it: the kernel
#: asks for them next (their mtime moved), and the mount answers from these without a round trip.
_PARENTS = (f("parents", list, optional=True, max_items=2),)
#: Exactly-once metadata changes (Raft thesis, 6.3): the sending client's id, the request's
#: sequence number (the same in every retry) and the lowest sequence number the client may
#: still retry, so the master can forget the answers below it.  Added by the client's MDS link.
_ONCE = (f("cid", str, optional=True), f("seq", int, optional=True), f("low", int, optional=True))
#: Names are bytes (any byte but "/" and NUL); text is taken as UTF-8 (common/names.py).
_ENTRY = (f("parent", int), f("name", bytes, str))
_CHUNK_MAP = (
    f("chunk_id", int),  # 0: a hole, no chunk yet
    f("version", int),
    f("replicas", list),  # [[cs_id, "host:port"], ...], chain order
    f("chunk_size", int),
)

SPECS: dict[Msg, MessageSpec] = {
    Msg.HELLO: MessageSpec(
        # uuid: the cluster's id in the peer's configuration (refused when it is another cluster's).
        (f("cluster", str), f("nonce", bytes), f("role", str), f("node", str), f("uuid", str, optional=True)),
        # proof: with the current secret; proof_next: with the next one, while a rotation is staged.
        (f("nonce", bytes), f("proof", bytes), f("proof_next", bytes, optional=True)),
    ),
    Msg.PROOF: MessageSpec((f("proof", bytes),), ()),
    # The server's proofs of the secrets it holds now (as in HELLO's answer); the peer answers with its own.
    Msg.REAUTH: MessageSpec(
        (f("nonce", bytes), f("proof", bytes), f("proof_next", bytes, optional=True)), (f("proof", bytes),)),
    Msg.PING: MessageSpec((), (
        f("role", str), f("node", str),
        # Optional, for `top` and `stat`: process figures {cpu, rss, uptime, pid} and the metrics URL.
        f("proc", dict, optional=True), f("metrics", str, optional=True),
        # A metadata server's: the last log index its store has applied (how far behind a follower is).
        f("applied", int, optional=True),
    )),
    Msg.LOOKUP: MessageSpec(_ENTRY, _ATTR),
    Msg.GETATTR: MessageSpec((f("ino", int),), _ATTR),
    # `follow`: follow a symbolic link in the last component too (links on the way are always followed).
    Msg.RESOLVE: MessageSpec((f("path", bytes, str), f("follow", bool, optional=True)), _ATTR),
    Msg.MKDIR: MessageSpec((*_ENTRY, f("mode", int, at_most=MODE_MAX), *_ONCE), (*_ATTR, *_PARENTS)),
    # With `session`, the new (or existing) file is registered as open by that mount (see OPEN);
    # `truncate` cuts an existing file to size 0 (O_TRUNC).
    # `oseq`: the mount's number for this registration (see RELEASE); `read_only`: see OPEN.
    Msg.CREATE: MessageSpec(
        (*_ENTRY, f("mode", int, at_most=MODE_MAX), f("exclusive", bool), f("session", str, optional=True),
         f("truncate", bool, optional=True), f("oseq", int, optional=True), f("read_only", bool, optional=True),
         *_ONCE),
        (*_ATTR, *_PARENTS),
    ),
    # A mount opens a file: the master registers it as held by the mount's session (an unlinked
    # file lives on while held) and answers its attributes; `truncate` is O_TRUNC.
    # `linked`: the mount holds no open file of the inode, so its kernel came by a name: the inode must
    # still have one; with `at`, that one (FEATURE_NAMED).  `chunks_version`: the highest version
    # among the file's chunks (`MetadataStore`).  `read_only`: this open cannot write (absent: it may),
    # so it does not hold up the trim of what a dead mount wrote past the file's size (open_files.py).
    Msg.OPEN: MessageSpec((f("ino", int), f("session", str), f("truncate", bool), f("linked", bool, optional=True),
                           f("at", list, optional=True, max_items=2), f("oseq", int, optional=True),
                           f("read_only", bool, optional=True), *_ONCE),
                          # `first`: chunk 0's map as CHUNK_READ answers it, for a file of one chunk with
                          # replicas online: reading a small file after its open takes no second request.
                          (*_ATTR, f("chunks_version", int, optional=True), f("first", dict, optional=True))),
    # The mount's last close of files: `inos`, each released up to the registration numbered as in
    # `uptos` (OPEN's and CREATE's `oseq`; a later one keeps the file held), or one `ino`, all of it.
    # `read_only` (FEATURE_READ_HOLDS): those of `inos` not released but held only to read from now on.
    Msg.RELEASE: MessageSpec((f("session", str), f("ino", int, optional=True), f("inos", list, optional=True),
                              f("uptos", list, optional=True), f("read_only", list, optional=True)), ()),
    # A mount's session renewal, with inodes it holds open (re-sent in pages when the
    # master answers known=False: a new master, or a session that had expired).
    # "complete": every file the mount holds is sent (the last page); "end": the mount unmounts.
    # "oseqs": each open file's latest registration number (see RELEASE), in the order of "open";
    # "read_only": those of "open" the mount holds only to read (see OPEN; absent: all may write).
    # `ask_listed` (FEATURE_LISTED): a question, changing nothing: whether the master knows the session,
    # and `listed`, whether it lists it (True while a new master has not read its list yet): a mount
    # that had one and reconnects learns that it was taken for dead (`session-timeout`), and that its
    # writes past the sizes it had committed may have been cut (mds/open_files.py).
    Msg.SESSION: MessageSpec((f("session", str), f("open", list), f("oseqs", list, optional=True),
                              f("read_only", list, optional=True),
                              f("complete", bool, optional=True), f("end", bool, optional=True),
                              f("ask_listed", bool, optional=True)),
                             (f("known", bool), f("listed", bool, optional=True))),
    # A mount that keeps names and attributes in the kernel's cache asks to be told, on this
    # connection, of every change another client makes (INVALIDATE notices) while it lasts.
    # `features` (request): what this mount takes in notices (FEATURE_CUTS); a master of an earlier
    # version refuses the field, and the mount watches again without it.
    # `lease` (answer): the mount may trust its kernel cache for WATCH_LEASE from this request's sending;
    # a mount sends WATCH again on the same connection to renew it (an earlier master grants none).
    Msg.WATCH: MessageSpec((f("features", list, optional=True, max_items=64),),
                           (f("features", list, optional=True, max_items=64), f("lease", bool, optional=True))),
    # Master -> watching mount: the names ([parent, name]) and inodes a change touched; `cuts`:
    # [[ino, cut, size]] of a file the change cut (truncate, O_TRUNC; see MetadataStore._cut).
    Msg.INVALIDATE: MessageSpec(
        (f("entries", list, max_items=INVALIDATE_MAX), f("inodes", list, max_items=INVALIDATE_MAX),
         f("cuts", list, optional=True, max_items=1)), (),
        notice=True),
    Msg.SYMLINK: MessageSpec((*_ENTRY, f("target", bytes), *_ONCE), (*_ATTR, *_PARENTS)),
    Msg.READDIR: MessageSpec(
        # Entries are [name (bytes), inode, type], in byte order, after the name `after`;
        # with `attrs`, [name, inode, type, attributes]: a page costs one request (readdirplus).
        (f("ino", int), f("after", bytes, str), f("limit", int), f("attrs", bool, optional=True)),
        # `parent`: with the first page (after ""), the directory's parent, for "..".
        (f("entries", list), f("more", bool), f("parent", int, optional=True)),
    ),
    Msg.SETATTR: MessageSpec(
        (
            f("ino", int),
            f("size", int, _NONE),
            f("mode", int, _NONE, at_most=MODE_MAX),
            # Times in integer nanoseconds since the epoch (utimensat's precision).
            f("mtime_ns", int, _NONE),
            f("atime_ns", int, _NONE),
            # [size, mtime_ns] or [size, mtime_ns, cut]: a writer's EXTEND not yet sent, done first in the
            # same commit.
            f("extend", list, optional=True, max_items=3),
            # The ctime of a change the mount made on an open file and commits now (default: now).
            f("ctime_ns", int, optional=True),
            # As OPEN's: the mount's kernel came by a name, so a file with no name left is NotFound.
            f("linked", bool, optional=True),
            f("at", list, optional=True, max_items=2),
            *_ONCE,
        ),
        _ATTR,
    ),
    # `noreplace`: fail with "exists" rather than replace the target (renameat2 RENAME_NOREPLACE).
    # `session` and `hold`: the mount's kernel still has the file the rename replaces, so the master
    # holds it for that session (registration number `hold`, as OPEN's `oseq`) until the mount
    # releases it: an open that raced the rename, or an O_PATH descriptor, opens the old file, as on a
    # local disk.  `held`: the file so held, if the rename replaced one.
    Msg.RENAME: MessageSpec(
        (*_ENTRY, f("new_parent", int), f("new_name", bytes, str), f("noreplace", bool, optional=True),
         f("session", str, optional=True), f("hold", int, optional=True), *_ONCE),
        (*_PARENTS, f("held", int, optional=True))),
    Msg.UNLINK: MessageSpec((*_ENTRY, *_ONCE), _PARENTS),
    Msg.RMDIR: MessageSpec((*_ENTRY, *_ONCE), _PARENTS),
    Msg.SET_REPLICAS: MessageSpec(
        (f("ino", int), f("replicas", int), f("min_replicas", int), f("recursive", bool)),
        (f("changed", int),),
    ),
    Msg.CHUNK_READ: MessageSpec((f("ino", int), f("index", int)), _CHUNK_MAP),
    Msg.CHUNK_WRITE: MessageSpec(
        # `failed`: replicas that just failed a write (the master drops them); `why`: the error, for its event;
        # `chunk_id` and `version`: the map they failed on (the master ignores failures of an older map).
        # `offset`, with a payload of at most FIRST_WRITE_MAX bytes: a write there; if this request
        # allocates the chunk, its replicas are made with it and `written` says so (else the writer
        # sends it as any write).  `fan` (FEATURE_FAN): the writer may send its small writes to every replica
        # at once; the answer's `fan` says it may now, at this version (mds/fan_grants.py).  `cut`
        # (answer, FEATURE_MAP_CUTS): the file's last cut when the master read the chunk.  `read` (answer,
        # FEATURE_WRITE_MAP_READS): the replicas to read through, when not all of them.
        (f("ino", int), f("index", int), f("failed", list, optional=True), f("why", str, optional=True),
         f("chunk_id", int, optional=True), f("version", int, optional=True), f("offset", int, optional=True),
         f("fan", bool, optional=True)),
        (*_CHUNK_MAP, f("written", bool, optional=True), f("fan", bool, optional=True),
         f("cut", int, optional=True), f("read", list, optional=True)),
        request_payload=True,
    ),
    # The writer's new size and the time (integer nanoseconds) of its last write; `cut`: the file's
    # last cut (its attribute "cut") the writer knew of when it wrote: writes made before a later
    # cut do not grow the file (MetadataStore._cut).
    Msg.EXTEND: MessageSpec((f("ino", int), f("size", int), f("mtime_ns", int), f("cut", int, optional=True)),
                            _ATTR),
    # A replica of `chunk_id` on `cs_id` failed a checksum: `blocks`, when known, are the bad ones
    # (from the server's own scrubber: every bad block; from a reader: the block it met).  `unsynced`
    # (the server's own, of a replica quarantined whole): its header never reached the disk.
    Msg.REPORT_BAD_REPLICA: MessageSpec(
        (f("chunk_id", int), f("cs_id", int), f("reason", str), f("blocks", list, optional=True, max_items=MAX_BLOCKS),
         f("unsynced", bool, optional=True), f("check", bool, optional=True)),
        (),
    ),
    # An exclusive lease on a file, held by one mount: op is "acquire", "renew" or "release".
    Msg.FILE_LEASE: MessageSpec(
        (f("ino", int), f("holder", str), f("op", str)), (f("ttl", float, int),)
    ),
    Msg.CLUSTER_STAT: MessageSpec((), (f("stat", dict),)),
    Msg.GET_EVENTS: MessageSpec(
        (f("since", int), f("limit", int)), (f("events", list),)
    ),
    Msg.CS_REGISTER: MessageSpec(
        (
            f("cluster_uuid", str),
            f("cs_id", int),  # 0: new server, the master assigns an id
            f("addr", str),
            f("host", str),
            f("total", int),
            f("free", int),
            # The first page of the replicas held, [[chunk_id, version], ...]; with `more`,
            # the rest follow in CS_REPORT_REPLICAS pages, the last one flagged.
            f("replicas", list, max_items=REPLICA_PAGE),
            f("location", str, optional=True),  # "ROOM.ROW.RACK" for failure domains
            f("tier", int, optional=True),  # 0-3: placement stays within a file's tier
            # Its machine went down under it last time (cs/clean_stop.py): any master asks it CS_FANNED.
            f("unclean", bool, optional=True),
            f("more", bool, optional=True),
            f("features", list, optional=True, max_items=64),  # what it does beyond earlier versions
        ),
        # `delete`: the stale or orphaned replicas of this page; `lease`: granted (FEATURE_LEASE).
        (f("cs_id", int), f("delete", list, max_items=REPLICA_PAGE), f("lease", bool, optional=True)),
    ),
    # One more page of a registration; the server counts as fully known after the `last` one.
    Msg.CS_REPORT_REPLICAS: MessageSpec(
        (f("cs_id", int), f("replicas", list, max_items=REPLICA_PAGE), f("last", bool)),
        (f("delete", list, max_items=REPLICA_PAGE),),
    ),
    Msg.CS_HEARTBEAT: MessageSpec(
        (
            f("cs_id", int), f("total", int), f("free", int), f("replica_count", int), f("load", int),
            # Optional, for `top` and `stat`: I/O totals and rates, process figures, the metrics URL.
            f("io", dict, optional=True), f("proc", dict, optional=True), f("metrics", str, optional=True),
        ),
        # The cluster settings a chunk server uses (scrub and replication rates); `lease` (FEATURE_LEASE).
        (f("settings", dict, optional=True), f("lease", bool, optional=True)),
    ),
    # With a payload: the new replica holds it at `offset` (a chunk's first write, FIRST_WRITE_MAX at most).
    Msg.CS_CREATE_CHUNK: MessageSpec(
        (f("chunk_id", int), f("version", int), f("offset", int, optional=True)), (), request_payload=True),
    Msg.CS_SET_VERSION: MessageSpec(
        (f("chunk_id", int), f("old_version", int), f("new_version", int)), ()
    ),
    # Replicas of removed chunks, a batch at a time (mds/deletions.py): whatever their version, absent ones ignored.
    Msg.CS_DELETE_CHUNKS: MessageSpec((f("chunk_ids", list, max_items=DELETE_BATCH),), ()),
    # Zero a replica from `length` on; with `new_version`, then move it there, one step to its writes
    # (mds/server.py `_cut_boundary_chunk`).
    Msg.CS_TRUNCATE_CHUNK: MessageSpec(
        (f("chunk_id", int), f("version", int), f("length", int), f("new_version", int, optional=True)), ()
    ),
    # Fetch chunk `chunk_id` at `version` from the chunk server at `source` and keep it here,
    # reading at most `rate` bytes/s; the reply says how many bytes were fetched.  A two-phase copy
    # (mds/replication.py): `track` first, while writers go on: the source notes the blocks written
    # from then on and the reply's `token` names that list; then, with the chunk frozen at its new
    # `version`, `since` = [the version copied, token]: only those blocks are fetched (the whole
    # chunk when the source cannot say).
    Msg.CS_REPLICATE: MessageSpec(
        (f("chunk_id", int), f("version", int), f("source", str), f("source_id", int), f("rate", int),
         f("track", bool, optional=True), f("since", list, optional=True, max_items=2)),
        (f("bytes", int), f("token", int, optional=True)),
    ),
    # Re-read a replica and check every block: `bad` lists the blocks that fail their checksum
    # (they are repaired, not the replica dropped); `whole` says the header itself was corrupt
    # and the replica was quarantined whole; `unsynced`, that the header was all zeros: the file
    # was made and never synced before its server stopped (a power cut), so nothing in it was promised.
    Msg.CS_VERIFY_CHUNK: MessageSpec(
        (f("chunk_id", int),),
        (f("ok", bool), f("bad", list, optional=True, max_items=MAX_BLOCKS), f("whole", bool, optional=True),
         f("unsynced", bool, optional=True)),
    ),
    # Replace bad `blocks` of this replica with good copies read from `sources` ([[cs_id, addr], ...],
    # the chunk's other replicas at `version`).  `lost`: every source's copy is bad too; `pending`:
    # no good copy was reached (a source was unreachable), to try again later.
    Msg.CS_REPAIR_BLOCKS: MessageSpec(
        (f("chunk_id", int), f("version", int), f("blocks", list, max_items=MAX_BLOCKS), f("sources", list)),
        (f("repaired", list), f("lost", list), f("pending", list)),
    ),
    # Take `blocks` of this replica as they are on its disk: each one that fails its checksum gets a
    # checksum made anew from its bytes, and the replica is synced; `taken` lists those.  Only for a
    # block a power cut tore on every replica (mds/fanned_mender.py `take_torn`): anywhere else it
    # would bless corrupt bytes.
    Msg.CS_TAKE_BLOCKS: MessageSpec(
        (f("chunk_id", int), f("version", int), f("blocks", list, max_items=MAX_BLOCKS)),
        (f("taken", list, max_items=MAX_BLOCKS),),
    ),
    # The chunks a writer sent a write to this replica alone in the last `within` seconds (its
    # small writes sent to every replica at once), the latest first (FEATURE_FANNED_REPORT).  With
    # `before` (FEATURE_WRITTEN_REPORT): `ends`, [chunk_id, end] of the chunks whose furthest end writes
    # reached, `end`, was reached `before` to `within` seconds ago, the latest written first.
    Msg.CS_FANNED: MessageSpec(
        (f("within", float, int), f("before", float, int, optional=True)),
        (f("chunks", list, max_items=FANNED_REPORT_MAX), f("ends", list, optional=True, max_items=FANNED_REPORT_MAX)),
    ),
    Msg.CS_READ: MessageSpec(
        (f("chunk_id", int), f("version", int), f("offset", int), f("length", int)), ()
    ),
    # `pieces` (small writes a mount held while one was on its way, sent together): the payload is
    # their bytes one after the other, each written at its offset in that order; `offset` is the first's.
    Msg.CS_WRITE: MessageSpec(
        (
            f("chunk_id", int),
            f("version", int),
            f("offset", int),
            f("chain", list),  # the replicas after this one: [[cs_id, addr], ...]
            f("sync", bool),
            f("pieces", list, optional=True, max_items=WRITE_PIECES_MAX),
        ),
        (),
        request_payload=True,
    ),
    # Small writes to several chunks with the same head, sent together (a VM's queue over a disk
    # image of many chunks): `parts` is [[chunk_id, version, chain, pieces], ...], one per chunk, each
    # `chain` the replicas of that chunk after this server and `pieces` as a CS_WRITE's; the payload
    # is every part's bytes in that order.  Never synced; at most SMALL_WRITE_MAX bytes.
    Msg.CS_WRITE_CHUNKS: MessageSpec((f("parts", list, max_items=WRITE_PIECES_MAX),), (), request_payload=True),
    Msg.CS_FSYNC: MessageSpec((f("chunk_id", int), f("version", int), f("chain", list)), ()),
    # `root`: the store's folder, as this server sees it; `mark`: the random text this server wrote into
    # the file LOCAL_MARK_FILE there at its start.  A mount that reads the same text from that file sees
    # the same folder (same machine, same mount namespace, read permission) and may read replicas from it.
    # `lease`: whether the server holds its lease from the master now (FEATURE_LEASE; an earlier mount
    # refuses the field, and reads over the network).
    Msg.CS_LOCAL: MessageSpec((), (f("root", str), f("mark", str), f("lease", bool, optional=True))),
    # `fanned` (FEATURE_FANNED_COUNTS): also `fanned_writes`, the writes a writer sent this replica alone
    # since it was made here, when the server knows (cs/recent_writes.py).
    Msg.CS_CHECKSUMS: MessageSpec(
        (f("chunk_id", int), f("version", int), f("fanned", bool, optional=True)),
        (f("crcs", list), f("fanned_writes", int, optional=True)),
    ),
    # The source of a two-phase copy: note the blocks of the replica written from now on ...
    Msg.CS_TRACK_WRITES: MessageSpec((f("chunk_id", int), f("version", int)), (f("token", int),)),
    # ... and hand them over (NotFound when it cannot: restarted, replica made anew, another copy began).
    Msg.CS_WRITTEN_SINCE: MessageSpec(
        (f("chunk_id", int), f("token", int)), (f("blocks", list, max_items=MAX_BLOCKS),)
    ),
    # A Raft message as a plain map (checked by raft.core.message_from_dict).
    Msg.RAFT: MessageSpec((f("m", dict),), (), notice=True),
    # A piece of a snapshot image at `offset` (raft/snapshot_files.py); an empty one asks how much is
    # held.  The reply says how many bytes of that image the follower holds, in order.
    Msg.RAFT_SNAPSHOT: MessageSpec(
        (f("index", int), f("term", int), f("size", int), f("crc", int), f("offset", int)), (f("have", int),),
        request_payload=True,
    ),
    # Register a new MDS's address; the reply gives its id and every member's address.
    Msg.MDS_ADD: MessageSpec((f("addr", str),), (f("id", int), f("members", list))),
    # A registered MDS, now running, asks to become a voter.
    Msg.MDS_JOIN: MessageSpec((f("id", int), f("addr", str)), (f("members", list),)),
    # The reply names the address removed (also of a member never started, which `stat` does not list).
    Msg.MDS_REMOVE: MessageSpec((f("id", int),), (f("addr", str, optional=True),)),
    Msg.GET_CONFIG: MessageSpec((), (f("settings", dict),)),
    Msg.SET_CONFIG: MessageSpec((f("values", dict),), (f("settings", dict),)),
    # Drain a chunk server (its replicas move away) and remove it once empty; `cancel` stops a drain.
    # The reply gives the replicas still on it; the server is gone from the registry when that is 0.
    Msg.RM_CS: MessageSpec((f("id", int), f("cancel", bool)), (f("left", int), f("removed", bool))),
    # File attributes failure-domain= and tier= (None: leave as is); inherited by new files below a directory.
    Msg.SET_PLACEMENT: MessageSpec(
        (f("ino", int), f("failure_domain", str, _NONE), f("tier", int, _NONE), f("recursive", bool)),
        (f("changed", int),),
    ),
}


#: Requests that carry `_ONCE` fields: a retry of one that took effect gets the first answer.
EXACTLY_ONCE = frozenset({
    Msg.MKDIR, Msg.CREATE, Msg.OPEN, Msg.SYMLINK, Msg.SETATTR, Msg.RENAME, Msg.UNLINK, Msg.RMDIR,
})


def _check(fields: tuple[Field, ...], header: dict[str, Any], what: str) -> dict[str, Any]:
    known = {fl.name for fl in fields}
    for key in header:
        if key not in known:
            raise ProtocolError(f"{what}: unknown field {key!r}")
    for fl in fields:
        if fl.name not in header:
            if fl.optional:
                continue
            raise ProtocolError(f"{what}: missing field {fl.name!r}")
        value = header[fl.name]
        # bool is a subclass of int: never accept True where a number is declared.
        if isinstance(value, bool) and bool not in fl.types:
            raise ProtocolError(f"{what}: field {fl.name!r} has the wrong type")
        if not isinstance(value, fl.types):
            raise ProtocolError(f"{what}: field {fl.name!r} has the wrong type")
        # msgpack carries integers up to 2**64-1; every number of ours fits a signed 64-bit SQLite INTEGER.
        if isinstance(value, int) and not (0 <= value <= fl.at_most if fl.at_most else INT64_MIN <= value <= INT64_MAX):
            raise ProtocolError(f"{what}: field {fl.name!r} is out of range")
        if fl.max_items and isinstance(value, list) and len(value) > fl.max_items:
            raise ProtocolError(
                f"{what}: field {fl.name!r} has {len(value)} items, more than the {fl.max_items} one frame "
                "may carry (send them in pages)")
    return header


def spec_of(mtype: int) -> tuple[Msg, MessageSpec]:
    try:
        msg = Msg(mtype)
    except ValueError:
        raise ProtocolError(f"unknown message type {mtype}") from None
    return msg, SPECS[msg]


def validate_request(mtype: int, header: dict[str, Any], payload_len: int) -> Msg:
    msg, spec = spec_of(mtype)
    _check(spec.request, header, msg.name)
    if payload_len and not spec.request_payload:
        raise ProtocolError(f"{msg.name}: unexpected payload")
    return msg


def validate_notice(mtype: int, header: dict[str, Any], payload_len: int) -> Msg:
    """A request sent as a notice: only the messages that may go without an answer."""
    msg = validate_request(mtype, header, payload_len)
    if not SPECS[msg].notice:
        raise ProtocolError(f"{msg.name} needs an answer: it cannot be sent as a notice")
    return msg


def validate_response(mtype: int, header: dict[str, Any]) -> None:
    msg, spec = spec_of(mtype)
    _check(spec.response, header, f"{msg.name} response")


def replica_list(value: Any, what: str = "replicas") -> list[tuple[int, str]]:
    """Check and convert a `[[cs_id, addr], ...]` list."""
    out: list[tuple[int, str]] = []
    if not isinstance(value, list) or len(value) > 64:
        raise ProtocolError(f"{what}: expected a short list of [cs_id, addr]")
    for item in value:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not isinstance(item[0], int)
            or isinstance(item[0], bool)
            or not isinstance(item[1], str)
        ):
            raise ProtocolError(f"{what}: expected [cs_id, addr] pairs")
        out.append((item[0], item[1]))
    return out


def int_pairs(value: Any, what: str) -> list[tuple[int, int]]:
    """Check and convert a `[[int, int], ...]` list."""
    if not isinstance(value, list):
        raise ProtocolError(f"{what}: expected a list")
    out: list[tuple[int, int]] = []
    for item in value:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) and INT64_MIN <= x <= INT64_MAX for x in item)
        ):
            raise ProtocolError(f"{what}: expected [int, int] pairs of signed 64-bit integers")
        out.append((item[0], item[1]))
    return out


def _pieces(value: Any) -> list[tuple[int, int]]:
    pieces = int_pairs(value, "pieces")
    if not pieces or any(length <= 0 or offset < 0 for offset, length in pieces):
        raise ProtocolError("pieces: expected [offset, length] pairs, each at least one byte")
    return pieces


def first_write(header: dict[str, Any], payload_len: int) -> int | None:
    """Check the first write a CHUNK_WRITE or CS_CREATE_CHUNK carries: its offset, or None when it carries none."""
    offset = header.get("offset")
    if not payload_len:
        return None
    if payload_len > FIRST_WRITE_MAX:
        raise ProtocolError(f"a chunk's first write sent with its allocation is at most {FIRST_WRITE_MAX} bytes, "
                            f"not {payload_len}")
    if not isinstance(offset, int) or offset < 0:
        raise ProtocolError("a first write needs its offset in the chunk (a non-negative integer)")
    return offset


def write_pieces(value: Any, payload_len: int) -> list[tuple[int, int]]:
    """Check a CS_WRITE's `pieces`: [[offset, length], ...] that add up to its payload, none empty."""
    pieces = _pieces(value)
    if sum(length for _, length in pieces) != payload_len:
        raise ProtocolError(f"pieces: their lengths do not add up to the payload's {payload_len} bytes")
    return pieces


@dataclass(frozen=True, slots=True)
class WritePart:
    """One chunk's share of a CS_WRITE_CHUNKS: its pieces are `payload[start:end]`, in their order."""

    chunk_id: int
    version: int
    chain: list[tuple[int, str]]
    pieces: list[tuple[int, int]]
    start: int
    end: int

    def to_wire(self, chain: list[tuple[int, str]]) -> list[Any]:
        """This part as a CS_WRITE_CHUNKS names it, with `chain` (the replicas after the receiver)."""
        return [self.chunk_id, self.version, [list(r) for r in chain], [list(p) for p in self.pieces]]


def write_parts(value: Any, payload_len: int) -> list[WritePart]:
    """Check a CS_WRITE_CHUNKS's `parts` against its payload: one part per chunk, each with pieces."""
    if not isinstance(value, list) or not value:
        raise ProtocolError("parts: expected a list of [chunk_id, version, chain, pieces]")
    if payload_len > SMALL_WRITE_MAX:
        raise ProtocolError(f"CS_WRITE_CHUNKS carries small writes: at most {SMALL_WRITE_MAX} bytes in all")
    parts: list[WritePart] = []
    seen: set[int] = set()
    count = pos = 0
    for item in value:
        if (not isinstance(item, list) or len(item) != 4
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in item[:2])):
            raise ProtocolError("parts: expected [chunk_id, version, chain, pieces] items")
        chunk_id, version = item[0], item[1]
        if chunk_id in seen:
            raise ProtocolError(f"parts: chunk {chunk_id:#x} is named twice (one part per chunk)")
        seen.add(chunk_id)
        pieces = _pieces(item[3])
        count += len(pieces)
        end = pos + sum(length for _, length in pieces)
        parts.append(WritePart(chunk_id, version, replica_list(item[2], "chain"), pieces, pos, end))
        pos = end
    if count > WRITE_PIECES_MAX:
        raise ProtocolError(f"parts: {count} pieces, more than the {WRITE_PIECES_MAX} one request may carry")
    if pos != payload_len:
        raise ProtocolError(f"parts: their pieces' lengths do not add up to the payload's {payload_len} bytes")
    return parts


def int_list(value: object, what: str, limit: int = SESSION_OPEN_PAGE, low: int = 0) -> list[int]:
    """Check a list of integers from the wire (inode or block numbers: from `low` = 0) and its length."""
    if (not isinstance(value, list) or len(value) > limit
            or not all(isinstance(x, int) and not isinstance(x, bool) and low <= x <= INT64_MAX for x in value)):
        raise InvalidArgument(f"{what}: expected a list of at most {limit} integers from {low} to 2**63-1")
    return value


#: Lists and maps in a header nest at most this deep (the deepest of ours: 3).
NESTING_MAX = 6


def check_nested_ints(header: dict[str, Any], what: str) -> None:
    """Refuse a header with an integer outside signed 64 bits inside a list or map, or nested too deep.

    `_check` looks at each field's own value; what lists and maps hold reaches the metadata
    store too, where SQLite cannot take such a number (a hostile-peer probe: a SETATTR's
    `extend` of 2**64-1 was committed and stopped every metadata server).  Not on the chunk
    servers' data path, whose headers are checked field by field where they are used.
    """
    for value in header.values():
        if type(value) in (list, dict) and _bad_ints(value, 1):
            raise ProtocolError(f"{what}: a number out of range, or lists nested more than {NESTING_MAX} deep")


def _bad_ints(value: list[Any] | dict[Any, Any], depth: int) -> bool:
    if depth > NESTING_MAX:
        return True
    for item in (value.values() if type(value) is dict else value):
        kind = type(item)
        if kind is int:
            if not INT64_MIN <= item <= INT64_MAX:
                return True
        elif (kind is list or kind is dict) and _bad_ints(item, depth + 1):
            return True
    return False


def entry_list(value: object, what: str) -> list[tuple[int, bytes]]:
    """Check a list of directory entries from the wire: ``[[parent inode, name], ...]``."""
    if not isinstance(value, list) or not all(
        isinstance(e, list) and len(e) == 2 and isinstance(e[0], int) and not isinstance(e[0], bool)
        and isinstance(e[1], bytes) for e in value
    ):
        raise ProtocolError(f"{what}: expected a list of [parent inode, name] pairs")
    return [(e[0], e[1]) for e in value]
