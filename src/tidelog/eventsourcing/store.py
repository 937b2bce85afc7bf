"""tidelog.eventsourcing's store: TidelogStore, one store = what SQLite calls a table: a tidelog
log (`log/`) plus the LMDB index derived from it (`index/`), its per-process registry (shared,
reference-counted; fork-aware), recovery (the index catches up with the log, never leads it), the
write path (checks, one atomic append, group commit, the in-memory overlay committed to LMDB in
bulk), and the reads (select_events' offsets, notifications, tracking).

Owns: every TidelogStore's state and the store's files (the log through its tidelog writer, the
index through tidelog.lmdbenv; the store's directory is flocked while this process takes or
tries the log's writer lock). Blocking calls (log sync, LMDB commits, flock, the log's waits)
run in tidelog's core and py-lmdb, which release the GIL. Errors leave as eventsourcing's
(PEP 249) errors.
"""
from __future__ import annotations

import atexit
import errno
import fcntl
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.persistence import (
    DatabaseError, DataError, IntegrityError, InterfaceError, Notification, OperationalError,
    StoredEvent, Tracking)

import lmdb

import tidelog
from tidelog import lmdbenv
from tidelog.eventsourcing.codec import (
    BE64, TRACK, FORMAT, decode, encode_insert, oid_bytes, oid_key, parse_head,
    tracking_trailer, version_key)

DEFAULT_SEGMENT_BYTES = 64 << 20
FLUSH_EVERY = 512          # pending inserts before the index overlay is committed to LMDB
FLUSH_SECONDS = 0.2        # ... or this long since the last commit
VIEW_HEADROOM = 1 << 20    # free map bytes ensured before a view's write transaction
MAX_READERS = 1024         # index read transactions open at once (threads of all processes)

# lmdbenv hands out its transactions and database handles untyped (Any: a HeldReader forwards
# to a py-lmdb transaction through __getattr__), so they stay Any here, named by these aliases.
_Txn = Any
_Db = Any
T = TypeVar("T")
# a pending insert: (end offset, [(oid key, version key)], first offset, tracking)
_Pending = tuple[int, list[tuple[bytes, bytes]], int, "Tracking | None"]


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


def _copy_error(exc: BaseException, cause: BaseException | None = None) -> BaseException:
    """An error like `exc` for one more insert of a group (each caller raises its own)."""
    if isinstance(exc, (DatabaseError, InterfaceError)):
        out: BaseException = type(exc)(str(exc))
    elif isinstance(exc, (lmdb.Error, tidelog.TidelogError)):
        out = OperationalError(str(exc))
    else:
        out = OperationalError(f"{type(exc).__name__}: {exc}")
    out.__cause__ = exc if cause is None else cause
    return out


class _Insert:
    """One insert waiting in a store's queue: what the leader appends (checked and encoded by
    the caller), then its result (first offset and end, or its error), set by the leader."""

    __slots__ = ("events", "entries", "values", "keys", "tracking", "nbytes", "wake", "group",
                 "handed_to", "first", "end", "error", "durable")

    def __init__(self, events: Sequence[StoredEvent], entries: list[tuple[bytes, bytes]],
                 values: list[bytes], keys: list[bytes], tracking: Tracking | None) -> None:
        self.events = events
        self.entries = entries
        self.values = values
        self.keys = keys
        self.tracking = tracking
        self.nbytes = sum(map(len, values)) + 64 * len(values)
        self.wake: threading.Lock | None = None    # a waiter blocks on it (held) until released
        self.group: list[_Insert] = []             # the group its caller took as the leader
        self.handed_to: _Insert | None = None      # ... and the insert it handed the lead to
        self.first: int | None = None
        self.end = 0
        self.error: BaseException | None = None
        self.durable = False


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
        self._durable_at_close = 0            # what close() made durable (a leader may sync after)
        self.inherited = False                # by a fork() child from its parent: unusable
        self.failure = None
        self.readonly = False
        self.log = None
        self._old_logs = []                   # read-only logs replaced by the writer's
        self._lock = threading.RLock()        # serialises checks + append (insert order)
        self._flush_lock = threading.Lock()   # one LMDB index commit at a time
        self._queue_lock = threading.Lock()   # the insert queue and the lead
        self._queue: deque[_Insert] = deque()  # inserts waiting for a leader
        self._leader: _Insert | None = None   # the insert whose caller leads (or was handed
                                              # the lead); None: no thread leads, queue empty
        self._group_size = 0                  # inserts in the last group
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

    def reader(self) -> lmdbenv.HeldReader:
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
        return 0 if v is None else BE64.unpack(v)[0]

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
                    flags, kind, raw, version, _t, trk, _p = parse_head(value)
                    txn.put(oid_key(kind, raw) + version_key(version), BE64.pack(off),
                            db=self.idx)
                    if trk is not None and trk[1] > tracking.get(trk[0], -1):
                        tracking[trk[0]] = trk[1]
            for name, nid in tracking.items():
                self._put_tracking_max(txn, name, nid)
            txn.put(b"indexed_upto", BE64.pack(end), db=self.meta)
            return end - upto

        return self._write(index, "re-index from the log")

    def _put_tracking_max(self, txn: _Txn, name: str, nid: int) -> None:
        key = name.encode("utf-8")
        old = txn.get(key, db=self.tracking_db)
        if old is None or TRACK.unpack(old)[0] < nid:
            txn.put(key, TRACK.pack(nid), db=self.tracking_db)

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
        w = None if raw is None else TRACK.unpack(raw)[0]
        if v is None:
            return w
        return v if w is None else max(v, w)

    def _check_tracking(self, txn: _Txn, tracking: Tracking) -> None:
        tracking_trailer(tracking)          # its fields: TypeError/ValueError naming them
        current = self._max_tracking(txn, tracking.application_name)
        if current is not None and tracking.notification_id <= current:
            raise IntegrityError(f"tracking notification id {tracking.notification_id} for "
                                 f"{tracking.application_name!r} is not greater than the "
                                 f"recorded {current}")

    def insert(self, events: Sequence[StoredEvent], tracking: Tracking | None = None) -> int | None:
        """Record `events` (and `tracking`) all or nothing; returns the first offset (or None
        for no events). IntegrityError, with nothing written, on any conflict.

        Group commit: the insert is checked and encoded in the caller's thread, then queued; one
        thread at a time (the leader) takes every queued insert, checks each against the index
        (a conflicting one is refused alone), appends the accepted ones as ONE atomic batch
        (each insert's records contiguous, in queue order), makes them durable with one sync,
        publishes them and wakes their callers; then hands the lead to the next queued insert."""
        self._check_writable()
        if self.log is None:
            raise OperationalError(f"{self.path}: this store holds tracking records only")
        if not events:
            if tracking is not None:
                self.insert_tracking(tracking)
            return None
        req = _Insert(events, *encode_insert(events, tracking), tracking)
        if len(set(req.entries)) != len(req.entries):
            seen: set[tuple[bytes, bytes]] = set()
            for e, entry in zip(events, req.entries):
                if entry in seen:
                    raise IntegrityError(f"stored events are not unique: {e.originator_id} "
                                         f"version {e.originator_version} appears twice")
                seen.add(entry)
        # an interrupt (KeyboardInterrupt: a signal handler's exception, raised at any point of
        # this thread) anywhere from here on is handled by _hand_on: an insert still queued
        # leaves the queue; a lead this caller holds, or a group it took, is handed on
        try:
            with self._queue_lock:
                self._queue.append(req)
                lead = self._leader is None
                if lead:
                    self._leader = req
                else:
                    req.wake = threading.Lock()
                    req.wake.acquire()
            if not lead:
                assert req.wake is not None
                req.wake.acquire()      # released by a leader: the insert is done, or its turn
                lead = self._leader is req  # to lead has come
            if lead:
                self._lead(req)
        except BaseException:
            self._hand_on(req)      # (again, if _lead's was cut short)
            raise
        if req.error is not None:
            raise req.error
        if req.first is None:           # (never: a taken insert gets its offset or its error)
            raise OperationalError(f"{self.path}: the insert was interrupted; nothing was "
                                   f"written")
        if not req.durable:             # the leader stopped before its sync: sync here
            self._commit(req.end, req.tracking)
        return req.first

    def _hand_on(self, me: _Insert) -> None:
        """After `me`'s caller led a group, or was interrupted: `me` leaves the queue if still
        there (nothing of it written), each insert of the group it took has its result (an
        insert the leader stopped before appending gets an error: nothing was written) and is
        woken, and the lead, if `me` holds it, passes to the first insert queued (or to none).

        Idempotent, so that what an interrupt cut short here is done by the next call (insert()
        calls it again on its way out): the state changes are made under the queue lock, and
        a wake-up made twice is harmless."""
        with self._queue_lock:
            queue = self._queue
            if me in queue:             # not taken (or taken halfway: still queued)
                queue.remove(me)
            group = me.group = [r for r in me.group if r not in queue]
            if self._leader is me:
                self._leader = me.handed_to = queue[0] if queue else None
        for r in group:
            if r.first is None and r.error is None:     # the leader stopped before appending it
                r.error = OperationalError(f"{self.path}: the insert was interrupted (its "
                                           f"group's leader stopped); nothing was written")
        nxt = me.handed_to
        for r in group + ([] if nxt is None else [nxt]):
            if r is not me and r.wake is not None:
                try:
                    r.wake.release()
                except RuntimeError:    # woken already
                    pass

    def _lead(self, me: _Insert) -> None:
        """The leader's turn: one group (the queued inserts, `me` among them), then the lead
        passes to the first insert still queued (or to none)."""
        escaped: BaseException | None = None
        try:
            assert self.log is not None
            if self._group_size > 1:
                # other threads insert too: let those that can run (the callers of the last
                # group, just woken) queue their next inserts before this group is taken
                time.sleep(0)
            # a group's records are one atomic batch, which must fit in a segment
            budget = self.log.segment_bytes // 4
            group = me.group
            with self._queue_lock:
                queue = self._queue
                while queue and (not group or queue[0].nbytes <= budget):
                    r = queue[0]
                    group.append(r)         # (then popped: an insert is always in one of them)
                    queue.popleft()
                    budget -= r.nbytes
            self._group_size = len(group)
            self._run_group(group)
        except BaseException as exc:
            escaped = exc
            raise
        finally:
            if isinstance(escaped, Exception):  # a failure of the group: each gets it
                for r in me.group:
                    if r.first is None and r.error is None:
                        r.error = _copy_error(escaped)
            self._hand_on(me)
        if (len(self._pending) >= FLUSH_EVERY
                or time.monotonic() - self._last_flush >= FLUSH_SECONDS):
            self.flush_index(blocking=False)

    def _run_group(self, group: list[_Insert]) -> None:
        """Check, append (one batch), sync and publish a group of inserts; each one's result
        (first offset, or its error) is set on it."""
        assert self.log is not None
        with self._lock:
            try:
                self._check_usable()
                accepted = self._check_group(group)
            except Exception as exc:
                for r in group:
                    r.error = _copy_error(exc)
                return
            if not accepted:
                return
            self._append_group(accepted)
            accepted = [r for r in accepted if r.error is None]
            if not accepted:
                return
        end = accepted[-1].end
        try:
            self._sync(end)
        except (DatabaseError, InterfaceError) as exc:
            for r in accepted:
                r.error = _copy_error(exc, exc.__cause__)
            return
        self._publish(end, [r.tracking for r in accepted if r.tracking is not None])
        for r in accepted:
            r.durable = True

    def _check_group(self, group: list[_Insert]) -> list[_Insert]:
        """The inserts of `group` that conflict with nothing recorded, pending or accepted
        before them in the group; the others get their IntegrityError."""
        accepted = []
        taken: set[tuple[bytes, bytes]] = set()
        names: dict[str, int] = {}
        overlay = self._overlay
        idx = self.idx
        with self._index_errors("read"), self.env.reader() as txn:
            get = txn.get
            for r in group:
                for entry in r.entries:
                    okey, vkey = entry
                    ov = overlay.get(okey)
                    if (entry in taken or (ov is not None and vkey in ov)
                            or get(okey + vkey, db=idx)):
                        e = r.events[r.entries.index(entry)]
                        r.error = IntegrityError(f"stored event already recorded: "
                                                 f"{e.originator_id} version "
                                                 f"{e.originator_version}")
                        break
                if r.error is None and r.tracking is not None:
                    t = r.tracking
                    current = self._max_tracking(txn, t.application_name)
                    earlier = names.get(t.application_name)
                    if earlier is not None and (current is None or earlier > current):
                        current = earlier
                    if current is not None and t.notification_id <= current:
                        r.error = IntegrityError(
                            f"tracking notification id {t.notification_id} for "
                            f"{t.application_name!r} is not greater than the recorded {current}")
                if r.error is None:
                    accepted.append(r)
                    taken.update(r.entries)
                    if r.tracking is not None:
                        names[r.tracking.application_name] = r.tracking.notification_id
        return accepted

    def _append_group(self, accepted: list[_Insert]) -> None:
        """Append the accepted inserts as one atomic batch (under the store's lock); if that
        fails with nothing appended, each on its own (so each gets its own result or error);
        the appended ones join the overlay and the pending list."""
        assert self.log is not None
        if len(accepted) == 1:
            reqs = accepted
        else:
            before = self.log.end_offset
            try:
                self._append(accepted, [v for r in accepted for v in r.values],
                             [k for r in accepted for k in r.keys])
                return
            except (tidelog.TidelogError, ValueError):
                if self.log.end_offset != before or self.failure is not None:
                    return          # (each has its error)
            reqs = accepted         # e.g. too large for a segment together, a full disk
        for r in reqs:
            r.error = None
            try:
                self._append([r], r.values, r.keys)
            except (tidelog.TidelogError, ValueError):
                pass                # (r has its error)

    def _append(self, reqs: list[_Insert], values: list[bytes], keys: list[bytes]) -> None:
        """append_batch `values` (the records of `reqs`, in order) and enter them in the overlay
        and the pending list; on an error, each of `reqs` gets it (and the error is raised for
        _append_group's fallback)."""
        assert self.log is not None
        log = self.log
        before = log.end_offset         # the first offset of the batch (this is the writer)
        err: DatabaseError | InterfaceError
        try:
            log.append_batch(values, keys=keys)
            self._enter(reqs, before)
        except tidelog.TidelogError as exc:
            self._check_open()
            if isinstance(exc, tidelog.LogFullError) and log.end_offset == before:
                # nothing was appended: the store stays usable once space is freed
                err = OperationalError(f"{self.path}: no space left for the log ({exc}); "
                                       f"nothing was written: free space and retry")
            else:
                if log.end_offset != before or len(reqs) == 1:
                    self.failure = exc
                err = _tidelog_error(exc)
            for r in reqs:
                r.error = _copy_error(err, exc)
            raise
        except ValueError as exc:
            for r in reqs:
                r.error = DataError(f"{self.path}: {exc} (set TIDELOG_SEGMENT_BYTES larger)")
                r.error.__cause__ = exc
            raise
        except BaseException:
            # an exception from outside: KeyboardInterrupt (a signal handler's), raised as
            # append_batch returned or while entering the batch: what is in the log is entered
            if log.end_offset == before + len(values):
                self._enter(reqs, before)
            raise

    def _enter(self, reqs: list[_Insert], first: int) -> None:
        """Enter the appended records of `reqs` (from offset `first` on) in the overlay and the
        pending list, and set each insert's offsets; idempotent (an insert whose offset is set
        is skipped), so that entering cut short by an interrupt can be completed."""
        overlay = self._overlay
        off = first
        for r in reqs:
            start = off
            off += len(r.entries)
            if r.first is not None:
                continue
            for i, (okey, vkey) in enumerate(r.entries):
                ov = overlay.get(okey)
                if ov is None:
                    ov = overlay[okey] = {}
                ov[vkey] = start + i
            if r.tracking is not None:
                self._overlay_tracking[r.tracking.application_name] = r.tracking.notification_id
            self._pending.append((off, r.entries, start, r.tracking))
            r.end = off
            r.first = start             # last: the insert is entered

    def _publish(self, end: int, trackings: list[Tracking]) -> None:
        """Durable below `end`: readers may see it (and `trackings`)."""
        with self._changed:
            if end > self.committed_end:
                self.committed_end = end
            for t in trackings:
                name = t.application_name
                if t.notification_id > self._visible_tracking.get(name, -1):
                    self._visible_tracking[name] = t.notification_id
            self._changed.notify_all()

    def _commit(self, end: int, tracking: Tracking | None = None) -> None:
        """Make everything below `end` durable (shared fdatasync), publish it (and `tracking`)."""
        self._sync(end)
        self._publish(end, [] if tracking is None else [tracking])

    def _sync(self, end: int) -> None:
        """Make the log durable below `end` at least (fdatasync, shared by the inserts
        appended so far); a failure stops the store (eventsourcing's error). The log closed
        meanwhile by close() (another thread), which made it durable first, is not a failure."""
        assert self.log is not None
        try:
            self.log.sync()
        except tidelog.TidelogError as exc:
            if self.closed and self._durable_at_close >= end:
                return
            self.failure = exc
            raise _tidelog_error(exc) from exc

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
        if self.closed:         # (a leader's flush after close(), which flushed everything)
            return
        durable = self.log.durable_offset if self.log is not None else 0
        # the durable head of the pending list, left there until it is committed: an interrupt
        # (KeyboardInterrupt) anywhere in here loses nothing (what stays pending is committed
        # again, harmlessly); a copy, as a leader may be appending to it meanwhile
        batch = []
        for item in list(self._pending):
            if item[0] > durable:
                break
            batch.append(item)
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
                    txn.put(okey + vkey, BE64.pack(first + i), db=self.idx)
                if t is not None:
                    trk[t.application_name] = max(t.notification_id,
                                                  trk.get(t.application_name, -1))
            for name, nid in trk.items():
                self._put_tracking_max(txn, name, nid)
            if tracking is not None:
                self._put_tracking_max(txn, tracking.application_name,
                                       tracking.notification_id)
            if batch:
                txn.put(b"indexed_upto", BE64.pack(batch[-1][0]), db=self.meta)

        try:
            self._write(commit, "commit the index")
        except (OperationalError, DatabaseError, InterfaceError) as exc:
            # the log is ahead of the index: fail-stop, a reopen re-indexes from the log
            self.failure = exc
            raise OperationalError(f"{self.path}: index commit failed: {exc}") from exc
        self._last_flush = time.monotonic()
        for _ in batch:             # (only this thread, under _flush_lock, takes from its head)
            self._pending.popleft()
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
                trk = parse_head(value)[5]
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
        kind, raw = oid_bytes(oid)
        okey = oid_key(kind, raw)
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
                    found.setdefault(k[len(okey):], BE64.unpack(v)[0])
            upto = self.indexed_upto(txn) if readonly else None
        if readonly:
            assert upto is not None
            for off, value in self._scan(upto, end):
                flags, k2, raw2, version, _t, _trk, _p = parse_head(value)
                if k2 == kind and raw2 == raw:
                    found.setdefault(version_key(version), off)
        items = sorted(found.items(), reverse=desc)
        out = []
        for vkey, off in items:
            version = BE64.unpack(vkey)[0] - (1 << 63)
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
                out.append(decode(self.log.read(offsets[i]).value))
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
                run.extend(decode(v) for v in batch.values)
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
                if want is not None and parse_head(value)[4] not in want:
                    continue
                out.append(decode(value, off + 1))
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
                    self._durable_at_close = self.log.durable_offset
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
