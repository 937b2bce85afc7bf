"""tidelog as a persistence module for the `eventsourcing` library (extra `tidelog[eventsourcing]`).

Owns: TidelogFactory, the four recorders, TidelogStore (one store = what SQLite calls a table) and
its per-process registry, the store's record format and its LMDB index. Uses tidelog's public API
and its shared argument checks (tidelog._args); the index is opened, grown and handled across
fork() by tidelog.lmdbenv. Writes: the store's files only (`log/` through its tidelog writer,
`index/`; the store's directory is flocked while this process takes or tries the log's
writer lock).

Select it with PERSISTENCE_MODULE=tidelog.eventsourcing and TIDELOG_PATH=<directory>
(<APPNAME>_TIDELOG_PATH overrides it per application). Optional: TIDELOG_SEGMENT_BYTES.

Design: the tidelog log is the source of truth; notification id = offset + 1. LMDB holds derived
data (the (originator_id, version) -> offset index, tracking, `indexed_upto`) and may lag the log,
never lead it: whoever takes the log's writer lock re-indexes [indexed_upto, end) from the log
(at open, briefly, if the lock is free; at a store's first write, when it becomes the writer);
readers look in the log for what the index lacks. The tracking record of an insert travels in its
last log record, so exactly-once survives a crash between the log sync and the index commit.
Inserts are checked before anything is appended (nothing is written on a conflict), appended as
one atomic batch, and made durable by a group commit shared by concurrent inserts; index entries
wait in an in-memory overlay until they are committed to LMDB in bulk.
"""
from __future__ import annotations

import atexit
import errno
import fcntl
import hashlib
import os
import struct
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar, overload
from uuid import UUID, SafeUUID

try:
    from eventsourcing.persistence import (
        AggregateRecorder, ApplicationRecorder, DatabaseError, DataError, InfrastructureFactory,
        IntegrityError, InterfaceError, Notification, OperationalError, ProcessRecorder,
        StoredEvent, Subscription, Tracking, TrackingRecorder)
    from eventsourcing.utils import Environment, EnvType, resolve_topic
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("tidelog.eventsourcing needs the `eventsourcing` library: "
                      "pip install 'tidelog[eventsourcing]'") from exc

import lmdb

import tidelog
from tidelog import _args, lmdbenv

__all__ = ["TidelogFactory", "TidelogAggregateRecorder", "TidelogApplicationRecorder",
           "TidelogTrackingRecorder", "TidelogProcessRecorder", "TidelogStore", "TidelogSubscription",
           "decode_event", "TopicCounts"]

FORMAT = 1
DEFAULT_SEGMENT_BYTES = 64 << 20
FLUSH_EVERY = 512          # pending inserts before the index overlay is committed to LMDB
FLUSH_SECONDS = 0.2        # ... or this long since the last commit
VIEW_HEADROOM = 1 << 20    # free map bytes ensured before a view's write transaction
MAX_READERS = 1024         # index read transactions open at once (threads of all processes)

# log record: flags, oid type, version, oid length, topic length, tracking length;
# then oid, topic (utf-8), tracking (int64 id + utf-8 name, on the last record of an insert), state
_HEAD = struct.Struct("<BBqIII")
_TRACK = struct.Struct("<q")
_BE64 = struct.Struct(">Q")
F_TRACKING = 1
F_END = 2                  # last record of an insert
OID_UUID, OID_STR = 0, 1
LONG_OID = 256             # longer originator ids are hashed in index keys

# lmdbenv hands out its transactions and database handles untyped (Any: a HeldReader forwards
# to a py-lmdb transaction through __getattr__), so they stay Any here, named by these aliases.
_Txn = Any
_Db = Any
T = TypeVar("T")
_R = TypeVar("_R", bound="_StoreHolder")
# a pending insert: (end offset, [(oid key, version key)], first offset, tracking)
_Pending = tuple[int, list[tuple[bytes, bytes]], int, "Tracking | None"]


def _oid_bytes(oid: object) -> tuple[int, bytes]:
    if isinstance(oid, UUID):
        return OID_UUID, oid.bytes
    if isinstance(oid, str):
        try:
            return OID_STR, oid.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"originator_id: not encodable as UTF-8 ({exc})") from None
    raise TypeError(f"originator_id: expected a UUID or a str, not {type(oid).__name__}")


def _oid_key(kind: int, raw: bytes) -> bytes:
    """The index prefix of one originator: unambiguous, so a prefix scan never mixes two ids.
    An id longer than LONG_OID bytes is keyed by its length and SHA-256 (an LMDB key holds at
    most 511 bytes)."""
    if len(raw) > LONG_OID:
        return bytes((kind | 0x80,)) + struct.pack(">I", len(raw)) + hashlib.sha256(raw).digest()
    return bytes((kind,)) + struct.pack(">I", len(raw)) + raw


def _version_key(version: object) -> bytes:
    if isinstance(version, bool) or not isinstance(version, int):
        raise TypeError(f"originator_version: expected an int, not {type(version).__name__}")
    if not -(1 << 63) <= version < (1 << 63):
        raise ValueError(f"originator_version: {version} is out of the 64-bit range")
    return _BE64.pack((version + (1 << 63)) & 0xFFFFFFFFFFFFFFFF)


def _int_or_none(value: object, name: str) -> int | None:
    return None if value is None else _args.integer(value, name)


def _topics_arg(topics: Iterable[str]) -> tuple[str, ...]:
    """`topics` as a tuple of str: a sequence (or other iterable) of str, not a str itself."""
    if isinstance(topics, (str, bytes, bytearray, memoryview)):
        raise TypeError(f"topics: expected a sequence of str, not a single "
                        f"{type(topics).__name__}")
    try:
        out = tuple(topics)
    except TypeError:
        raise TypeError(f"topics: expected a sequence of str, not "
                        f"{type(topics).__name__}") from None
    for t in out:
        _text(t, "topics: each topic")
    return out


def _text(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"{what}: expected a str, not {type(value).__name__}")
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what}: not encodable as UTF-8 ({exc})") from None


def _encode(event: StoredEvent,
            tracking: Tracking | None = None) -> tuple[bytes, bytes]:
    kind, raw = _oid_bytes(event.originator_id)
    topic = _text(event.topic, "topic")
    flags = 0
    trk = b""
    if tracking is not None:
        flags |= F_TRACKING
        trk = _TRACK.pack(tracking.notification_id) + _text(tracking.application_name,
                                                            "tracking.application_name")
    state = event.state
    if not isinstance(state, (bytes, bytearray, memoryview)):
        raise TypeError(f"state: expected bytes, not {type(state).__name__}")
    return b"".join((_HEAD.pack(flags, kind, event.originator_version, len(raw), len(topic),
                                len(trk)), raw, topic, trk, state)), str(event.originator_id).encode("utf-8")


def _parse_head(value: bytes | memoryview
                ) -> tuple[int, int, bytes, int, bytes, tuple[str, int] | None, int]:
    """(flags, oid key, version, topic bytes, tracking or None, state start) of a log record."""
    flags, kind, version, nraw, ntopic, ntrk = _HEAD.unpack_from(value, 0)
    p = _HEAD.size
    raw = bytes(value[p:p + nraw])
    p += nraw
    topic = bytes(value[p:p + ntopic])
    p += ntopic
    trk = None
    if ntrk:
        (nid,) = _TRACK.unpack_from(value, p)
        trk = (bytes(value[p + 8:p + ntrk]).decode("utf-8"), nid)
        p += ntrk
    return flags, kind, raw, version, topic, trk, p


def _oid_from(kind: int, raw: bytes) -> UUID | str:
    if kind == OID_UUID:
        u = object.__new__(UUID)            # UUID(bytes=raw) without its argument checks
        object.__setattr__(u, "int", int.from_bytes(raw, "big"))
        object.__setattr__(u, "is_safe", SafeUUID.unknown)
        return u
    return raw.decode("utf-8")


_topics: dict[bytes, str] = {}


@overload
def _decode(value: bytes | memoryview, nid: None = None) -> StoredEvent: ...
@overload
def _decode(value: bytes | memoryview, nid: int) -> Notification: ...
def _decode(value: bytes | memoryview, nid: int | None = None) -> StoredEvent:
    """The StoredEvent (or, given its id, the Notification) a log record holds."""
    v = bytes(value)            # one copy: `state` must be bytes anyway
    flags, kind, version, nraw, ntopic, ntrk = _HEAD.unpack_from(v, 0)
    p = _HEAD.size
    oid = _oid_from(kind, v[p:p + nraw])
    p += nraw
    tb = v[p:p + ntopic]
    topic = _topics.get(tb)
    if topic is None:
        topic = tb.decode("utf-8")
        if len(_topics) < 4096:
            _topics[tb] = topic
    state = v[p + ntopic + ntrk:]
    if nid is None:
        return StoredEvent(originator_id=oid, originator_version=version, topic=topic,
                           state=state)
    return Notification(id=nid, originator_id=oid, originator_version=version, topic=topic,
                        state=state)


def decode_event(record: tidelog.Record) -> Notification:
    """The eventsourcing Notification a record of an events log holds (id = offset + 1): for
    readers of the log itself (a tidelog Replayer, a cursor)."""
    return _decode(record.value, record.offset + 1)


class TopicCounts:
    """A replay machine for `tidelog replay LOG --machine tidelog.eventsourcing:TopicCounts`:
    events per topic of an events log."""

    counts: dict[str, int]

    def __init__(self) -> None:
        self.counts = {}

    def apply(self, record: tidelog.Record) -> None:
        topic = _parse_head(record.value)[4].decode("utf-8")
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def snapshot(self) -> bytes:
        import json
        return json.dumps(self.counts, sort_keys=True).encode("utf-8")

    def restore(self, snapshot: bytes) -> None:
        import json
        self.counts = json.loads(snapshot)

    def __repr__(self) -> str:
        return f"TopicCounts({self.counts})"


def _tidelog_error(exc: BaseException) -> DatabaseError | InterfaceError:
    """The eventsourcing (PEP 249) error for a tidelog error."""
    if isinstance(exc, tidelog.LogLockedError):
        return OperationalError(str(exc))
    if isinstance(exc, tidelog.CorruptLogError):
        return DatabaseError(str(exc))
    if isinstance(exc, (tidelog.LogClosedError,)):
        return InterfaceError(str(exc))
    return OperationalError(str(exc))


def _index_error(env: lmdbenv.LmdbEnv, exc: BaseException,
                 doing: str) -> DatabaseError | InterfaceError:
    """The eventsourcing error for an error of the LMDB index (py-lmdb's, or lmdbenv's
    translation of one)."""
    if isinstance(exc, lmdb.Error):
        exc = env.translate(exc, doing)
    return _tidelog_error(exc)


class TidelogStore:
    """One store: a tidelog log (`log/`, unless `with_log=False`) plus an LMDB env (`index/`).

    Get one with TidelogStore.acquire(path): stores are shared per process (one writer per log),
    reference-counted; release() drops a reference and closes the store with the last one. A store
    opens read-only (`readonly`) and becomes the log's writer at its first write (become_writer):
    a process that only reads never holds the writer lock. While another process is the writer,
    reads and subscriptions work and writes raise OperationalError, nothing written."""

    _registry: dict[str, TidelogStore] = {}
    _registry_lock = threading.Lock()
    failure: BaseException | None
    log: tidelog.Log | None
    _old_logs: list[tidelog.Log]
    _pending: deque[_Pending]
    _overlay: dict[bytes, dict[bytes, int]]
    _overlay_tracking: dict[str, int]
    _visible_tracking: dict[str, int]
    _dbs: dict[bytes, _Db]

    @classmethod
    def acquire(cls, path: str | os.PathLike[str], *, with_log: bool = True, create: bool = True,
                segment_bytes: int | None = None) -> TidelogStore:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path: expected a str or os.PathLike, not {type(path).__name__}")
        real = os.path.realpath(os.fspath(path))
        with cls._registry_lock:
            store = cls._registry.get(real)
            if store is None or store.closed:   # (closed by close(), not release(): replaced)
                store = cls(real, with_log=with_log, create=create, segment_bytes=segment_bytes)
                cls._registry[real] = store
            store._refs += 1
            return store

    @classmethod
    def close_all(cls) -> None:
        """Close every store this process holds (at interpreter exit: index flushed, logs closed
        cleanly)."""
        with cls._registry_lock:
            stores = list(cls._registry.values())
            cls._registry.clear()
        for store in stores:
            try:
                store.close()
            except Exception:
                pass

    @classmethod
    def _after_fork_in_child(cls) -> None:
        """A fork() child starts with no stores of its own: the parent's belong to the parent
        (its log writer, its locks, its LMDB environment); acquire() opens them again here."""
        cls._registry_lock = threading.Lock()
        stores = list(cls._registry.values())
        cls._registry = {}
        for store in stores:
            store.inherited = True
            # let go of the copies of the parent's logs now, not at the child's exit: the
            # writer's lock descriptor is shared with the parent (flock), so a child that lives
            # on would otherwise keep the parent's writer lock after the parent closed the store
            for log in store._logs():
                try:
                    log.close()
                except Exception:
                    pass

    def release(self) -> None:
        with self._registry_lock:
            self._refs -= 1
            if self._refs > 0:
                return
            if self._registry.get(self.path) is self:
                del self._registry[self.path]
        self.close()

    def __init__(self, path: str, *, with_log: bool = True, create: bool = True,
                 segment_bytes: int | None = None) -> None:
        self.path = path
        self._refs = 0
        self.closed = False
        self.inherited = False                # by a fork() child from its parent: unusable
        self.failure = None
        self.readonly = False
        self.log = None
        self._old_logs = []                   # read-only logs replaced by the writer's
        self._lock = threading.RLock()        # serialises checks + append (insert order)
        self._flush_lock = threading.Lock()   # one LMDB index commit at a time
        self._changed = threading.Condition()  # committed_end advanced
        self._pending = deque()               # (end offset, [(oid key, vkey, offset)], tracking)
        self._overlay = {}                    # oid key -> {version key: offset}, not yet in LMDB
        self._overlay_tracking = {}           # name -> max notification id, not yet in LMDB
        self._visible_tracking = {}           # ... of those, the committed ones
        self._last_flush = time.monotonic()
        self._dbs = {}
        if segment_bytes is None:
            segment_bytes = DEFAULT_SEGMENT_BYTES
        if not os.path.isdir(path):
            if not create:
                raise OperationalError(f"{path}: no such tidelog store (CREATE_TABLE is off)")
            os.makedirs(path, exist_ok=True)
        index = os.path.join(path, "index")
        fresh = not os.path.exists(os.path.join(index, "data.mdb"))
        try:
            os.makedirs(index, exist_ok=True)
            # lmdbenv: a map that starts small and grows, shared per process, fork-aware
            self.env = lmdbenv.acquire(index, what="the event store's index", max_dbs=16,
                                       max_readers=MAX_READERS)
        except OSError as exc:
            raise OperationalError(f"{index}: cannot open the event store's index: "
                                   f"{exc}") from exc
        except tidelog.TidelogError as exc:
            raise _tidelog_error(exc) from exc
        try:
            if fresh:  # LMDB does not sync directory entries: a power loss could drop its files
                for d in (index, path):
                    lmdbenv.fsync_dir(d)
            with self._index_errors("open its databases"):
                self.idx = self.env.db("idx")
                self.tracking_db = self.env.db("tracking")
                self.meta = self.env.db("meta")
            if with_log or os.path.isdir(os.path.join(path, "log")):
                self._open_log(os.path.join(path, "log"), segment_bytes)
        except BaseException:
            lmdbenv.release(self.env)
            raise
        self.committed_end = 0                # a writer's: what readers may see

    @contextmanager
    def _index_errors(self, doing: str) -> Iterator[None]:
        """Errors of the LMDB index leave as eventsourcing (PEP 249) errors."""
        try:
            yield
        except (lmdb.Error, tidelog.TidelogError) as exc:
            self._check_open()          # closed (or inherited) meanwhile: say that
            raise _index_error(self.env, exc, doing) from exc

    def _reader(self) -> lmdbenv.HeldReader:
        """A read transaction of the index (a context manager)."""
        with self._index_errors("read"):
            return self.env.reader()

    def _write(self, fn: Callable[[_Txn], T], doing: str = "write") -> T:
        """fn(txn) in an index write transaction, committed; run again after the map grew."""
        with self._index_errors(doing):
            return self.env.write(fn)

    @contextmanager
    def _writer_turn(self) -> Iterator[None]:
        """The store's turn lock (flock, exclusive, on the store's directory), held while this
        process takes the log's writer lock, briefly to catch the index up at open or for good at
        its first write: so a process that fails to take the writer lock while holding it knows a
        writer is really at work (not a reader catching up at its open), and two processes never
        catch the index up at once. The directory, not a file in it: a lock file could be deleted
        or replaced (a "stale lock" cleaned up) while held, or be unreadable to some user, and a
        new one would not exclude the process holding the old; any user who can read the store
        can open its directory, and it cannot be deleted while the store is in it."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            yield               # (unreachable in practice: the store was opened through it)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:        # explicit: a fork() child may share this descriptor
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _open_writer(self) -> tidelog.Log | None:
        """A writer of the log, or None while another process holds its writer lock."""
        try:
            return tidelog.open(self._logpath, segment_bytes=self._segment_bytes,
                                durability="none")
        except tidelog.LogLockedError:
            return None
        except tidelog.TidelogError as exc:
            raise _tidelog_error(exc) from exc

    def _open_log(self, logpath: str, segment_bytes: int) -> None:
        """Open the log to read: the store becomes its writer at its first write (become_writer),
        so a process that only reads never holds the lock an application needs to write.

        At open the index is caught up with the log while this process briefly holds the writer
        lock, if it is free; if another process writes, its index may lag the log (reads look in
        the log for what it lacks) but must not lead it."""
        self._logpath, self._segment_bytes = logpath, segment_bytes
        with self._writer_turn():
            try:
                log = self._open_writer()
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                    raise
                log = None              # may not write here: a reader (nothing to catch up)
            if log is not None:
                self.log = log
                try:
                    self._check_no_retention()
                    self.recover()
                finally:
                    self.log = None
                    log.close()
            try:
                self.log = tidelog.open(logpath, readonly=True)
            except tidelog.TidelogError as exc:
                raise _tidelog_error(exc) from exc
        self.readonly = True
        try:
            self._check_no_retention()
            if log is None:
                upto = self.indexed_upto()          # first: the log's end only grows
                self._check_not_ahead(upto, self.log.end_offset)
        except BaseException:
            self.log.close()
            raise

    def _check_no_retention(self) -> None:
        assert self.log is not None
        if self.log.retain_bytes is not None or self.log.retain_seconds is not None:
            raise DatabaseError(f"{self._logpath}: an event store must not have retention")

    def _check_not_ahead(self, upto: int, end: int) -> None:
        if upto > end:
            raise DatabaseError(
                f"{self.path}: the index reaches offset {upto} but the log ends at {end} "
                f"(acknowledged events are missing from the log); refusing to open")

    def become_writer(self) -> None:
        """Make this process the writer of the store's log (an insert does it at its first
        write): take the log's writer lock and catch the index up with the log. OperationalError,
        with nothing written, while another process is the writer (the store stays readable; a
        later write tries again, e.g. once that process has closed the store or exited)."""
        self._check_open()
        if not self.readonly:
            return
        with self._flush_lock, self._lock:
            self._check_open()
            if not self.readonly:
                return
            with self._writer_turn():
                try:
                    log = self._open_writer()
                except OSError as exc:
                    if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                        raise
                    raise OperationalError(
                        f"{self.path}: this process may not write the store's log ({exc}); "
                        f"nothing was written: it can only read") from exc
                if log is None:
                    raise OperationalError(
                        f"{self.path}: another process is this store's writer "
                        f"(tidelog.LogLockedError); nothing was written: this process can read, "
                        f"and write once that process closes the store or exits")
                old, self.log = self.log, log
                try:
                    self.recover()
                except BaseException as exc:
                    self.log = old
                    log.close()
                    if isinstance(exc, tidelog.TidelogError):
                        self._check_open()
                        raise _tidelog_error(exc) from exc
                    raise
            self.committed_end = log.end_offset
            assert old is not None          # the read-only log this store had
            self._old_logs.append(old)      # other threads may be reading through it
            self.readonly = False
        with self._changed:
            self._changed.notify_all()

    # -- recovery: the index catches up with the log, never leads it ------------------------------

    def indexed_upto(self, txn: _Txn | None = None) -> int:
        if txn is None:
            with self._index_errors("read"), self.env.reader() as t:
                return self.indexed_upto(t)
        v = txn.get(b"indexed_upto", db=self.meta)
        return 0 if v is None else _BE64.unpack(v)[0]

    def recover(self) -> int:
        """Index every record in [indexed_upto, end) of the log (a writer only; idempotent)."""
        assert self.log is not None
        end = self.log.end_offset

        def index(txn: _Txn) -> int:
            assert self.log is not None
            upto = self.indexed_upto(txn)
            self._check_not_ahead(upto, end)
            if upto < self.log.start_offset:
                raise DatabaseError(f"{self.path}: the log starts at {self.log.start_offset}, "
                                    f"after the indexed point {upto}")
            if txn.get(b"format", db=self.meta) is None:
                txn.put(b"format", b"%d" % FORMAT, db=self.meta)
            if upto == end:
                return 0
            tracking: dict[str, int] = {}
            cur = self.log.cursor(start=upto)
            while cur.position < end:
                batch = cur.read_batch(max_records=min(65536, end - cur.position))
                if len(batch) == 0:
                    break
                for off, value in zip(batch.offsets.tolist(), batch.values):
                    flags, kind, raw, version, _t, trk, _p = _parse_head(value)
                    txn.put(_oid_key(kind, raw) + _version_key(version), _BE64.pack(off),
                            db=self.idx)
                    if trk is not None and trk[1] > tracking.get(trk[0], -1):
                        tracking[trk[0]] = trk[1]
            for name, nid in tracking.items():
                self._put_tracking_max(txn, name, nid)
            txn.put(b"indexed_upto", _BE64.pack(end), db=self.meta)
            return end - upto

        return self._write(index, "re-index from the log")

    def _put_tracking_max(self, txn: _Txn, name: str, nid: int) -> None:
        key = name.encode("utf-8")
        old = txn.get(key, db=self.tracking_db)
        if old is None or _TRACK.unpack(old)[0] < nid:
            txn.put(key, _TRACK.pack(nid), db=self.tracking_db)

    # -- writing ----------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.inherited:
            raise OperationalError(f"{self.path}: this store was opened by the parent of this "
                                   f"forked process; acquire it again in this process")
        if self.closed:
            raise InterfaceError(f"{self.path}: the store is closed")

    def _check_writable(self) -> None:
        """Before a write, outside the store's locks: the store becomes the writer here."""
        self._check_open()
        if self.readonly:
            self.become_writer()
        self._check_usable()

    def _check_usable(self) -> None:
        """Under the store's locks (after _check_writable): still open and not stopped."""
        self._check_open()
        if self.readonly:       # never: a store stays the writer once it became it
            raise OperationalError(f"{self.path}: this store is not the writer of its log")
        if self.failure is not None:
            raise OperationalError(f"{self.path}: the store stopped after a failure "
                                   f"({self.failure!r}); reopen it to recover")

    def _max_tracking(self, txn: _Txn, name: str, pending: bool = True) -> int | None:
        """The tracking id of `name`: with `pending`, counting inserts not yet durable (for the
        checks of new inserts); without, only what readers may see."""
        v = (self._overlay_tracking if pending else self._visible_tracking).get(name)
        raw = txn.get(name.encode("utf-8"), db=self.tracking_db)
        w = None if raw is None else _TRACK.unpack(raw)[0]
        if v is None:
            return w
        return v if w is None else max(v, w)

    def _check_tracking(self, txn: _Txn, tracking: Tracking) -> None:
        nid = tracking.notification_id
        if isinstance(nid, bool) or not isinstance(nid, int):
            raise TypeError(f"tracking.notification_id: expected an int, not "
                            f"{type(nid).__name__}")
        if not -(1 << 63) <= nid < (1 << 63):
            raise ValueError(f"tracking.notification_id: {nid} is out of the 64-bit range")
        if len(_text(tracking.application_name, "tracking.application_name")) > 480:
            raise ValueError("tracking.application_name: longer than 480 bytes of UTF-8")
        current = self._max_tracking(txn, tracking.application_name)
        if current is not None and tracking.notification_id <= current:
            raise IntegrityError(f"tracking notification id {tracking.notification_id} for "
                                 f"{tracking.application_name!r} is not greater than the "
                                 f"recorded {current}")

    def insert(self, events: Sequence[StoredEvent], tracking: Tracking | None = None) -> int | None:
        """Record `events` (and `tracking`) all or nothing; returns the first offset (or None
        for no events). IntegrityError, with nothing written, on any conflict."""
        self._check_writable()
        if self.log is None:
            raise OperationalError(f"{self.path}: this store holds tracking records only")
        if not events:
            if tracking is not None:
                self.insert_tracking(tracking)
            return None
        with self._lock:
            self._check_usable()
            entries = []
            seen = set()
            with self._index_errors("read"), self.env.reader() as txn:
                for e in events:
                    if not isinstance(e, StoredEvent):
                        raise TypeError(f"stored_events: expected StoredEvent items, not "
                                        f"{type(e).__name__}")
                    kind, raw = _oid_bytes(e.originator_id)
                    okey = _oid_key(kind, raw)
                    vkey = _version_key(e.originator_version)
                    if (okey, vkey) in seen:
                        raise IntegrityError(f"stored events are not unique: {e.originator_id} "
                                             f"version {e.originator_version} appears twice")
                    seen.add((okey, vkey))
                    ov = self._overlay.get(okey)
                    if (ov is not None and vkey in ov) or txn.get(okey + vkey, db=self.idx):
                        raise IntegrityError(f"stored event already recorded: "
                                             f"{e.originator_id} version {e.originator_version}")
                    entries.append((okey, vkey))
                if tracking is not None:
                    self._check_tracking(txn, tracking)
            values, keys = [], []
            last = len(events) - 1
            for i, e in enumerate(events):
                v, key = _encode(e, tracking if i == last else None)   # key: the id as text
                values.append(v)
                keys.append(key)
            before = self.log.end_offset
            try:
                first = self.log.append_batch(values, keys=keys)
            except tidelog.TidelogError as exc:
                self._check_open()
                if isinstance(exc, tidelog.LogFullError) and self.log.end_offset == before:
                    # nothing was appended: the store stays usable once space is freed
                    raise OperationalError(f"{self.path}: no space left for the log ({exc}); "
                                           f"nothing was written: free space and retry") from exc
                self.failure = exc
                raise _tidelog_error(exc) from exc
            except ValueError as exc:
                raise DataError(f"{self.path}: {exc} (set TIDELOG_SEGMENT_BYTES larger)") from exc
            n = len(values)
            for i, (okey, vkey) in enumerate(entries):
                self._overlay.setdefault(okey, {})[vkey] = first + i
            if tracking is not None:
                self._overlay_tracking[tracking.application_name] = tracking.notification_id
            self._pending.append((first + n, entries, first, tracking))
        self._commit(first + n, tracking)
        return first

    def _commit(self, end: int, tracking: Tracking | None = None) -> None:
        """Make everything below `end` durable (shared fdatasync), publish it (and `tracking`),
        maybe index it."""
        assert self.log is not None
        try:
            self.log.sync()
        except tidelog.TidelogError as exc:
            self.failure = exc
            raise _tidelog_error(exc) from exc
        with self._changed:
            if end > self.committed_end:
                self.committed_end = end
            if tracking is not None:
                name = tracking.application_name
                if tracking.notification_id > self._visible_tracking.get(name, -1):
                    self._visible_tracking[name] = tracking.notification_id
            self._changed.notify_all()
        if (len(self._pending) >= FLUSH_EVERY
                or time.monotonic() - self._last_flush >= FLUSH_SECONDS):
            self.flush_index(blocking=False)

    def flush_index(self, tracking: Tracking | None = None, blocking: bool = True) -> bool:
        """Commit the durable part of the overlay (and `tracking`) to LMDB in one transaction.
        With blocking=False, return False at once if another thread is committing."""
        if not self._flush_lock.acquire(blocking=blocking):
            return False
        try:
            self._flush_locked(tracking)
        finally:
            self._flush_lock.release()
        return True

    def _flush_locked(self, tracking: Tracking | None) -> None:
        durable = self.log.durable_offset if self.log is not None else 0
        batch = []
        while self._pending and self._pending[0][0] <= durable:
            batch.append(self._pending.popleft())
        if not batch and tracking is None:
            return
        if batch:       # durable: publish them before the index makes them visible
            with self._changed:
                if batch[-1][0] > self.committed_end:
                    self.committed_end = batch[-1][0]
                for _end, _entries, _first, t in batch:
                    if t is not None and t.notification_id > self._visible_tracking.get(
                            t.application_name, -1):
                        self._visible_tracking[t.application_name] = t.notification_id
                self._changed.notify_all()
        def commit(txn: _Txn) -> None:
            trk: dict[str, int] = {}
            for end, entries, first, t in batch:
                for i, (okey, vkey) in enumerate(entries):
                    txn.put(okey + vkey, _BE64.pack(first + i), db=self.idx)
                if t is not None:
                    trk[t.application_name] = max(t.notification_id,
                                                  trk.get(t.application_name, -1))
            for name, nid in trk.items():
                self._put_tracking_max(txn, name, nid)
            if tracking is not None:
                self._put_tracking_max(txn, tracking.application_name,
                                       tracking.notification_id)
            if batch:
                txn.put(b"indexed_upto", _BE64.pack(batch[-1][0]), db=self.meta)

        try:
            self._write(commit, "commit the index")
        except (OperationalError, DatabaseError, InterfaceError) as exc:
            # the log is ahead of the index: fail-stop, a reopen re-indexes from the log
            self.failure = exc
            raise OperationalError(f"{self.path}: index commit failed: {exc}") from exc
        self._last_flush = time.monotonic()
        with self._lock:            # an insert may be adding to the same originator's dict
            for end, entries, first, t in batch:
                for okey, vkey in entries:
                    ov = self._overlay.get(okey)
                    if ov is not None:
                        ov.pop(vkey, None)
                        if not ov:
                            del self._overlay[okey]

    def insert_tracking(self, tracking: Tracking) -> None:
        """A tracking-only update: checked, then committed to LMDB with the durable overlay."""
        self._check_writable()
        if self.log is None:
            # no log, no writer lock: other processes may write this store too, so the check
            # and the update are one LMDB write transaction (serialised across processes)
            def record(txn: _Txn) -> None:
                self._check_tracking(txn, tracking)
                self._put_tracking_max(txn, tracking.application_name, tracking.notification_id)
            with self._lock:
                self._check_usable()
                self._write(record, "record tracking")
            return
        with self._flush_lock, self._lock:      # lock order: _flush_lock, then _lock
            self._check_usable()
            with self._index_errors("read"), self.env.reader() as txn:
                self._check_tracking(txn, tracking)
            if self.log is not None:
                try:
                    self.log.sync()      # the index never leads the log
                except tidelog.TidelogError as exc:
                    self.failure = exc
                    raise _tidelog_error(exc) from exc
            self._flush_locked(tracking)

    @contextmanager
    def transaction(self, tracking: Tracking | None = None) -> Iterator[_Txn]:
        """An LMDB write transaction that also records `tracking` (checked first): a view's state
        and its tracking record commit together, or neither does."""
        self._check_writable()
        with self._flush_lock, self._lock:
            if tracking is not None and self.log is not None:
                self.log.sync()
                self._flush_locked(None)
            # the caller's block cannot be run again after a full map: make room first
            with self._index_errors("grow its map"):
                self.env.reserve(VIEW_HEADROOM)
            with self._index_errors("begin a transaction"):
                txn = self.env.begin_write()
            try:
                if tracking is not None:
                    self._check_tracking(txn, tracking)
                    self._put_tracking_max(txn, tracking.application_name,
                                           tracking.notification_id)
                yield txn
            except BaseException as exc:
                self.env.end(txn)
                if lmdbenv.is_map_full(exc):
                    with self._index_errors("grow its map"):
                        self.env.grow()
                    raise OperationalError(f"{self.path}: the index map was full; it has "
                                           f"grown: run the transaction again") from exc
                if isinstance(exc, lmdb.Error):
                    raise _index_error(self.env, exc, "write") from exc
                raise
            try:
                self.env.end(txn, commit=True)
            except BaseException as exc:
                if lmdbenv.is_map_full(exc):
                    with self._index_errors("grow its map"):
                        self.env.grow()
                    raise OperationalError(f"{self.path}: the index map was full; it has "
                                           f"grown: run the transaction again") from exc
                if isinstance(exc, (lmdb.Error, tidelog.TidelogError)):
                    raise _index_error(self.env, exc, "commit") from exc
                raise

    def named_db(self, name: bytes) -> _Db:
        """An LMDB database handle of this store's env, opened (created) once per store."""
        with self._registry_lock:
            db = self._dbs.get(name)
            if db is None:
                try:
                    text = name.decode("utf-8")
                except UnicodeDecodeError:
                    raise ValueError(f"name: {name!r} is not UTF-8") from None
                with self._index_errors("open a database"):
                    db = self._dbs[name] = self.env.db(text)
            return db

    # -- reading ----------------------------------------------------------------------------------

    def end(self) -> int:
        """The exclusive end of what readers may see: committed inserts only."""
        self._check_open()
        if self.log is None:
            return 0
        if self.readonly:
            return self.log.durable_offset
        return self.committed_end

    def max_tracking_id(self, name: str) -> int | None:
        if self.readonly:   # (a store that becomes the writer meanwhile: the same answer)
            best = None
            with self._index_errors("read"), self.env.reader() as txn:
                best = self._max_tracking(txn, name, pending=False)
                upto = self.indexed_upto(txn)
            for off, value in self._scan(upto, self.end()):
                trk = _parse_head(value)[5]
                if trk is not None and trk[0] == name and (best is None or trk[1] > best):
                    best = trk[1]
            return best
        with self._index_errors("read"), self.env.reader() as txn:
            return self._max_tracking(txn, name, pending=False)

    def _scan(self, lo: int, hi: int) -> Iterator[tuple[int, memoryview]]:
        if hi <= lo:
            return
        assert self.log is not None
        cur = self.log.cursor(start=lo)
        while cur.position < hi:
            batch = cur.read_batch(max_records=min(4096, hi - cur.position))
            if len(batch) == 0:
                return
            yield from zip(batch.offsets.tolist(), batch.values)

    def event_offsets(self, oid: UUID | str, gt: int | None, lte: int | None, desc: bool,
                      limit: int | None) -> list[int]:
        kind, raw = _oid_bytes(oid)
        okey = _oid_key(kind, raw)
        if limit is not None and limit <= 0:
            return []
        readonly = self.readonly    # once: the store may become the writer meanwhile
        end = self.end()
        found = {}
        ov = self._overlay.get(okey)
        if ov:
            for vkey, off in list(ov.items()):
                if off < end:
                    found[vkey] = off
        with self._index_errors("read"), self.env.reader() as txn:
            cur = txn.cursor(db=self.idx)
            if cur.set_range(okey):
                for k, v in cur:
                    if not k.startswith(okey) or len(k) != len(okey) + 8:
                        break
                    found.setdefault(k[len(okey):], _BE64.unpack(v)[0])
            upto = self.indexed_upto(txn) if readonly else None
        if readonly:
            assert upto is not None
            for off, value in self._scan(upto, end):
                flags, k2, raw2, version, _t, _trk, _p = _parse_head(value)
                if k2 == kind and raw2 == raw:
                    found.setdefault(_version_key(version), off)
        items = sorted(found.items(), reverse=desc)
        out = []
        for vkey, off in items:
            version = _BE64.unpack(vkey)[0] - (1 << 63)
            if gt is not None and not version > gt:
                continue
            if lte is not None and not version <= lte:
                continue
            out.append(off)
            if limit is not None and len(out) >= limit:
                break
        return out

    def read_events(self, offsets: Sequence[int]) -> list[StoredEvent]:
        """The stored events at `offsets` (in that order); runs of consecutive offsets (an
        aggregate's events of one insert) are read as batches."""
        try:
            return self._read_events(offsets)
        except tidelog.TidelogError as exc:
            self._check_open()
            raise _tidelog_error(exc) from exc

    def _read_events(self, offsets: Sequence[int]) -> list[StoredEvent]:
        out = []
        i, n = 0, len(offsets)
        cur = None
        while i < n:
            assert self.log is not None
            j = i + 1
            step = offsets[j] - offsets[i] if j < n else 1
            if step not in (1, -1):
                out.append(_decode(self.log.read(offsets[i]).value))
                i = j
                continue
            while j < n and offsets[j] - offsets[j - 1] == step:
                j += 1
            lo = min(offsets[i], offsets[j - 1])
            if cur is None:
                cur = self.log.cursor(start=lo)
            else:
                cur.seek(lo)
            run: list[StoredEvent] = []
            while len(run) < j - i:
                batch = cur.read_batch(max_records=j - i - len(run))
                if len(batch) == 0:
                    raise DatabaseError(f"{self.path}: the index names offset "
                                        f"{cur.position}, past the log's end")
                run.extend(_decode(v) for v in batch.values)
            out.extend(run if step == 1 else reversed(run))
            i = j
        return out

    def notifications(self, lo: int, hi: int, limit: int,
                      topics: Sequence[str]) -> list[Notification]:
        """Notifications of offsets [lo, hi) (hi capped at the committed end), topic-filtered."""
        try:
            return self._notifications(lo, hi, limit, topics)
        except tidelog.TidelogError as exc:
            self._check_open()          # closed meanwhile: InterfaceError
            raise _tidelog_error(exc) from exc

    def _notifications(self, lo: int, hi: int, limit: int,
                       topics: Sequence[str]) -> list[Notification]:
        hi = min(hi, self.end())
        out: list[Notification] = []
        if hi <= lo or limit <= 0:
            return out
        assert self.log is not None
        want = {t.encode("utf-8") for t in topics} if topics else None
        cur = self.log.cursor(start=lo)
        while cur.position < hi:
            batch = cur.read_batch(max_records=min(4096, hi - cur.position,
                                                   65536 if want else limit - len(out)))
            if len(batch) == 0:
                break
            for off, value in zip(batch.offsets.tolist(), batch.values):
                if want is not None and _parse_head(value)[4] not in want:
                    continue
                out.append(_decode(value, off + 1))
                if len(out) >= limit:
                    return out
        return out

    def wait_for_change(self, seen_end: int, timeout: float) -> bool:
        """Block until end() passes `seen_end` or `timeout` seconds pass."""
        if self.readonly:
            try:
                return self._wait_readonly(seen_end, timeout)
            except tidelog.TidelogError as exc:
                self._check_open()
                raise _tidelog_error(exc) from exc
        with self._changed:
            return self._changed.wait_for(lambda: self.committed_end > seen_end or self.closed,
                                          timeout)

    def _wait_readonly(self, seen_end: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        assert self.log is not None
        cur = self.log.cursor(start=min(seen_end, self.log.end_offset))
        while self.end() <= seen_end:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if cur.position <= seen_end and not cur.wait(timeout=min(left, 0.05)):
                continue
            time.sleep(0.001)        # appended, not yet durable
        return True

    def close(self) -> None:
        if self.closed:
            return
        if self.inherited:      # a fork() child only lets go of its copy: nothing is written
            self.closed = True
            for log in self._logs():
                log.close()
            lmdbenv.release(self.env)
            return
        # the locks even while read-only: become_writer() in another thread swaps the logs and
        # catches the index up under them, and must not find them closed halfway
        with self._flush_lock, self._lock:
            if self.closed:     # closed by another thread meanwhile
                return
            try:
                if self.log is not None and not self.readonly and self.failure is None:
                    self.log.sync()
                    self._flush_locked(None)
            finally:
                self.closed = True
                with self._changed:
                    self._changed.notify_all()
                for log in self._logs():
                    log.close()
                lmdbenv.release(self.env)

    def _logs(self) -> list[tidelog.Log]:
        return ([] if self.log is None else [self.log]) + self._old_logs


atexit.register(TidelogStore.close_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=TidelogStore._after_fork_in_child)


class _StoreHolder:
    """What every recorder shares: its store reference, released once (close() or collection)."""

    def __init__(self, store: TidelogStore) -> None:
        if not isinstance(store, TidelogStore):
            raise TypeError(f"store: expected a TidelogStore, not {type(store).__name__}")
        self.store = store
        self._finalizer = weakref.finalize(self, store.release)

    def close(self) -> None:
        """Release this recorder's reference to its store."""
        self._finalizer()


class TidelogAggregateRecorder(_StoreHolder, AggregateRecorder):
    """Stored events of aggregates, in a TidelogStore."""

    def __init__(self, store: TidelogStore) -> None:
        _StoreHolder.__init__(self, store)

    def insert_events(self, stored_events: Sequence[StoredEvent],
                      **kwargs: Any) -> Sequence[int] | None:
        self.store.insert(list(stored_events))
        return None

    def select_events(self, originator_id: UUID | str, *, gt: int | None = None,
                      lte: int | None = None, desc: bool = False,
                      limit: int | None = None) -> Sequence[StoredEvent]:
        store = self.store
        return store.read_events(store.event_offsets(originator_id, gt, lte, desc, limit))


class TidelogApplicationRecorder(TidelogAggregateRecorder, ApplicationRecorder):
    """Stored events in the application sequence: notification id = log offset + 1."""

    def insert_events(self, stored_events: Sequence[StoredEvent],
                      **kwargs: Any) -> Sequence[int] | None:
        stored_events = list(stored_events)
        first = self.store.insert(stored_events)
        if first is None:
            return []
        return list(range(first + 1, first + 1 + len(stored_events)))

    def select_notifications(self, start: int | None, limit: int, stop: int | None = None,
                             topics: Sequence[str] = (), *,
                             inclusive_of_start: bool = True) -> Sequence[Notification]:
        start = _int_or_none(start, "start")
        limit = _args.integer(limit, "limit")
        stop = _int_or_none(stop, "stop")
        topics = _topics_arg(topics)
        if start is None:
            lo = 0
        else:
            lo = start - 1 if inclusive_of_start else start
        lo = max(lo, 0)
        hi = self.store.end() if stop is None else max(stop, 0)
        return self.store.notifications(lo, hi, limit, topics)

    def max_notification_id(self) -> int | None:
        return self.store.end() or None

    def subscribe(self, gt: int | None = None,
                  topics: Sequence[str] = ()) -> Subscription[ApplicationRecorder]:
        return TidelogSubscription(self, gt=_int_or_none(gt, "gt"), topics=_topics_arg(topics))


class TidelogSubscription(Subscription[TidelogApplicationRecorder]):
    """Notifications with id > gt: what is recorded, then new ones as they are committed (in this
    process through a condition; across processes on tidelog's wake-up of readers)."""

    buffer: deque[Notification]

    def __init__(self, recorder: TidelogApplicationRecorder, gt: int | None = None,
                 topics: Sequence[str] = ()) -> None:
        super().__init__(recorder=recorder, gt=gt, topics=topics)
        self.store = recorder.store
        self.topics = tuple(topics)
        self.position = max(gt or 0, 0)     # offsets below it are scanned
        self.buffer = deque()
        self.stopped = threading.Event()

    def stop(self) -> None:
        super().stop()
        self.stopped.set()

    def __next__(self) -> Notification:
        store = self.store
        while True:
            if self.stopped.is_set():
                raise StopIteration
            if self.buffer:
                return self.buffer.popleft()
            seen = store.end()
            got = store.notifications(self.position, seen, 500, self.topics)
            if got:
                self.buffer.extend(got)
            # fewer than the limit: everything below `seen` is scanned (a topic filter may
            # have skipped it all)
            self.position = got[-1].id if len(got) == 500 else max(seen, self.position)
            if not got:
                store.wait_for_change(self.position, 0.1)


class TidelogTrackingRecorder(_StoreHolder, TrackingRecorder):
    """Tracking records in a store's LMDB. A view subclass keeps its own state in `view_db()`
    and writes it with `transaction(tracking)`, so state and tracking commit together."""

    def __init__(self, store: TidelogStore) -> None:
        _StoreHolder.__init__(self, store)

    def insert_tracking(self, tracking: Tracking) -> None:
        self.store.insert_tracking(tracking)

    def max_tracking_id(self, application_name: str) -> int | None:
        return self.store.max_tracking_id(application_name)

    def view_db(self, name: str | bytes = b"view") -> _Db:
        """A named LMDB database of this store for a view's own state (the first call for a
        name must come outside a transaction: it may create the database)."""
        if isinstance(name, str):
            name = name.encode("utf-8")
        if name in (b"idx", b"tracking", b"meta"):
            raise ValueError(f"name: {name!r} is reserved")
        return self.store.named_db(b"view:" + name)

    def transaction(self, tracking: Tracking | None = None) -> AbstractContextManager[_Txn]:
        """An LMDB write transaction (context manager) that also records `tracking`."""
        return self.store.transaction(tracking)

    def read_transaction(self) -> lmdbenv.HeldReader:
        """An LMDB read transaction (context manager)."""
        return self.store._reader()


class TidelogProcessRecorder(TidelogTrackingRecorder, TidelogApplicationRecorder, ProcessRecorder):
    """Events and the tracking record of the upstream notification they came from, atomically."""

    def __init__(self, store: TidelogStore) -> None:
        _StoreHolder.__init__(self, store)

    def insert_events(self, stored_events: Sequence[StoredEvent],
                      **kwargs: Any) -> Sequence[int] | None:
        stored_events = list(stored_events)
        first = self.store.insert(stored_events, kwargs.get("tracking"))
        if first is None:
            return []
        return list(range(first + 1, first + 1 + len(stored_events)))


class TidelogFactory(InfrastructureFactory[TidelogTrackingRecorder]):
    """Builds tidelog recorders under TIDELOG_PATH: a store per <app name>_<purpose>."""

    TIDELOG_PATH = "TIDELOG_PATH"
    TIDELOG_SEGMENT_BYTES = "TIDELOG_SEGMENT_BYTES"
    CREATE_TABLE = "CREATE_TABLE"
    tracking_recorder_class = TidelogTrackingRecorder
    _recorders: list[weakref.ref[_StoreHolder]]

    def __init__(self, env: Environment | EnvType | None) -> None:
        super().__init__(env)
        root = self.env.get(self.TIDELOG_PATH)
        if not root:
            raise EnvironmentError(
                f"tidelog.eventsourcing: set {self.TIDELOG_PATH} (or "
                f"{(self.env.name or 'APPNAME').upper()}_{self.TIDELOG_PATH}) to a directory")
        self.root = root
        seg = self.env.get(self.TIDELOG_SEGMENT_BYTES)
        try:
            self.segment_bytes = int(seg) if seg else None
        except ValueError:
            raise ValueError(f"{self.TIDELOG_SEGMENT_BYTES}: an int, not {seg!r}") from None
        self.prefix = self.env.name.lower() or "stored"
        self._recorders = []

    def _create(self) -> bool:
        v = (self.env.get(self.CREATE_TABLE) or "yes").lower()
        return v not in ("n", "no", "f", "false", "off", "0")

    def _store(self, purpose: str, with_log: bool = True) -> TidelogStore:
        os.makedirs(self.root, exist_ok=True)
        return TidelogStore.acquire(os.path.join(self.root, f"{self.prefix}_{purpose}"),
                                    with_log=with_log, create=self._create(),
                                    segment_bytes=self.segment_bytes)

    def _keep(self, recorder: _R) -> _R:
        self._recorders.append(weakref.ref(recorder))
        return recorder

    def aggregate_recorder(self, purpose: str = "events") -> AggregateRecorder:
        return self._keep(TidelogAggregateRecorder(self._store(purpose)))

    def application_recorder(self) -> ApplicationRecorder:
        return self._keep(TidelogApplicationRecorder(self._store("events")))

    def tracking_recorder(self, tracking_recorder_class: type[TidelogTrackingRecorder] | None = None
                          ) -> TidelogTrackingRecorder:
        if tracking_recorder_class is None:
            topic = self.env.get(self.TRACKING_RECORDER_TOPIC)
            tracking_recorder_class = (resolve_topic(topic) if topic
                                       else self.tracking_recorder_class)
        if not (isinstance(tracking_recorder_class, type)
                and issubclass(tracking_recorder_class, TidelogTrackingRecorder)):
            raise TypeError(f"tracking_recorder_class: expected a TidelogTrackingRecorder "
                            f"subclass, not {tracking_recorder_class!r}")
        return self._keep(tracking_recorder_class(self._store("tracking", with_log=False)))

    def process_recorder(self) -> ProcessRecorder:
        return self._keep(TidelogProcessRecorder(self._store("events")))

    def close(self) -> None:
        """Release the stores of every recorder this factory built."""
        refs, self._recorders = self._recorders, []
        for ref in refs:
            r = ref()
            if r is not None:
                r.close()
