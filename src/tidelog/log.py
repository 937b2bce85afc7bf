"""Log: open, append, read, cursor, sync, close. The hot paths are the core's (tidelog._core)."""

import os
import threading
import time
import warnings
import weakref

from tidelog import _args, _core
from tidelog.cursor import Cursor
from tidelog.errors import LogClosedError, LogFailedError, OffsetOutOfRangeError, TidelogError
from tidelog.positions import POSITIONS_DIR, PositionStore, check_name

__all__ = ["Log", "open"]

DURABILITY_MODES = ("none", "batch", "always")
MIN_SEGMENT_BYTES = 4096          # one page of frames at least
MAX_SEGMENT_BYTES = _core.MAX_SEGMENT_BYTES_   # positions are stored as u32 (docs/FORMAT.md)
MAX_UNSYNCED_BYTES = 4 << 20      # "batch" mode: appends wait this far ahead of durable_offset
MIN_UNSYNCED_BYTES = 4096

_logs = weakref.WeakSet()         # every Log of this process (for the fork hook)


def _after_fork_in_child():
    # a lock another thread held at fork() stays held for good in the child (that thread is
    # not there to release it): every Log's store lock starts afresh
    for log in list(_logs):
        log._store_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _check_path(path):
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    try:
        path = os.fspath(path)
    except TypeError:
        raise TypeError(f"path: expected a str or os.PathLike, not {type(path).__name__}") from None
    if not path:
        raise ValueError("path: empty")
    return os.path.abspath(path)


def _check_unsynced(value):
    """open()'s max_unsynced_bytes: None (no bound) or a byte count of at least one page."""
    if value is None:
        return None
    return _args.count(value, "max_unsynced_bytes", MIN_UNSYNCED_BYTES)


class Log(_core.LogCore):
    """An append-only log in a directory. Use tidelog.open() to get one."""

    def __init__(self, path, *, readonly=False, create=True, segment_bytes=256 << 20,
                 durability="batch", sync_interval=0.005, retain_bytes=None, retain_seconds=None,
                 repair=None, max_unsynced_bytes=MAX_UNSYNCED_BYTES):
        path = _check_path(path)
        if repair not in (None, "truncate"):
            raise ValueError(f"repair: None or 'truncate', not {repair!r}")
        if repair is not None and readonly:
            raise ValueError("repair: a repair needs a writer (readonly=False)")
        segment_bytes = _args.count(segment_bytes, "segment_bytes", MIN_SEGMENT_BYTES,
                                    MAX_SEGMENT_BYTES)
        if not isinstance(durability, str):
            raise TypeError(f"durability: expected a str, not {type(durability).__name__}")
        if durability not in DURABILITY_MODES:
            raise ValueError(f"durability: one of {DURABILITY_MODES}, not {durability!r}")
        self.sync_interval = _args.seconds(sync_interval, "sync_interval")
        self.retain_bytes = (None if retain_bytes is None else
                             _args.count(retain_bytes, "retain_bytes"))
        self.retain_seconds = _args.seconds(retain_seconds, "retain_seconds", allow_none=True)
        if self.retain_bytes is not None:
            self._retain_bytes = self.retain_bytes
        if self.retain_seconds is not None:
            self._retain_ns = int(self.retain_seconds * 1e9)
        self._flusher = None
        self._store = None
        self._store_lock = threading.Lock()
        _logs.add(self)
        self._stop_flusher = threading.Event()
        self._interval_ns = int(self.sync_interval * 1e9)
        self.max_unsynced_bytes = _check_unsynced(max_unsynced_bytes)
        self._max_unsynced = -1 if max_unsynced_bytes is None else max_unsynced_bytes
        self._open(path, bool(readonly), bool(create), segment_bytes, durability, repair)
        if not readonly and (retain_bytes is not None or retain_seconds is not None):
            try:
                self._apply_retention()
            except BaseException:
                self._abandon()
                raise
        if not readonly and durability == "batch":
            # the thread holds only a weak reference: a Log dropped without close() is collected
            # (and closed) as usual
            self._flusher = threading.Thread(
                target=_flush_loop, args=(weakref.ref(self), self._stop_flusher, self.sync_interval),
                name="tidelog-flusher", daemon=True)
            self._flusher.start()


    def wait_durable(self, offset, timeout=None):
        """Block until durable_offset > offset (True) or `timeout` seconds pass (False).
        In "none" mode only a sync() (in any thread) or close() makes progress.
        LogFailedError if the writer stops meanwhile."""
        offset = _args.offset(offset)
        timeout = _args.timeout(timeout)
        if self.closed:
            raise LogClosedError(f"{self.path}: the log is closed")
        if self.failure is not None:
            raise LogFailedError(str(self.failure)) from self.failure
        # the writer (its sync paths or native flusher) and readers alike sleep on the control
        # page's durable word; a failure or close() wakes them
        return self._wait_for(offset, True, timeout)

    def _crash(self):
        """For tests: stop as a killed process would (no sync, no clean shutdown)."""
        if self._flusher is not None:
            self._stop_flusher.set()
            self._flusher.join()
            self._flusher = None
        self._abandon()

    def close(self):
        """Sync everything, mark a clean shutdown and release the log. Idempotent.

        In a fork() child, a Log its parent opened is only let go (this process's descriptors
        and mappings): nothing the parent shares is written, and no lock its threads may have
        held at fork() time is taken."""
        inherited = self._inherited_copy
        if self._flusher is not None:
            if not inherited:               # (in a child the thread is the parent's)
                self._stop_flusher.set()
                # (not from a signal handler or finalizer inside this thread's own sync: the
                # flusher may be waiting for that sync; it stops by itself)
                if self._flusher is not threading.current_thread() and not self._inside_writer:
                    self._flusher.join()
            self._flusher = None
        try:
            self._close()
        finally:
            if not inherited:
                with self._durable_cv:
                    self._durable_cv.notify_all()
            store, self._store = self._store, None
            if store is not None:
                store.close()

    def __enter__(self):
        if self.closed:
            raise LogClosedError(f"{self.path}: the log is closed")
        return self

    def __exit__(self, *exc):
        self.close()

    def __reduce__(self):
        raise TypeError(f"a tidelog Log cannot be pickled (it holds this process's mappings "
                        f"and locks): send its path {self.path!r} and open it in the other "
                        f"process (readonly=True for a reader)")

    def __del__(self):
        try:
            if self.closed:
                return
            # as an unclosed file does: a writer held its lock, descriptors and (in "none" mode)
            # unsynced records until the collector came (a reader holds nothing that matters;
            # a fork child's copy is its parent's to close)
            warn = not self.readonly and not self._inherited_copy
        except Exception:
            return
        try:
            if warn:        # (raises under -W error: reported as unraisable, as files are)
                warnings.warn(f"unclosed tidelog writer {self.path!r}: close it, or use "
                              f"`with tidelog.open(...) as log:`", ResourceWarning, stacklevel=2,
                              source=self)
        except Warning:
            raise
        except Exception:
            pass            # (at interpreter exit the warnings machinery may be half gone)
        finally:
            try:
                self.close()
            except Exception:
                pass

    def __repr__(self):
        if self.closed:
            return f"<tidelog.Log {self.path!r} closed>"
        mode = "readonly" if self.readonly else self.durability
        return (f"<tidelog.Log {self.path!r} {mode} [{self.start_offset}, {self.end_offset}) "
                f"durable<{self.durable_offset}>")

    def cursor(self, start="earliest", *, name=None, durable_only=None):
        """A cursor at `start`: an offset, "earliest" or "latest".

        Anonymous cursors see every appended record. A named cursor (`name`) resumes from the
        position last committed under that name (else from `start`), commits with
        `cur.commit()`, and reads durable records only; `durable_only` overrides either
        default. A committed position beyond the log's end (records lost to a repair or to a
        power loss in "none" mode) raises OffsetOutOfRangeError rather than skipping ahead:
        rewind it with `log.set_position(name, offset)`."""
        if self.closed:
            raise LogClosedError(f"{self.path}: the log is closed")
        if name is not None:
            check_name(name)
        if durable_only is None:
            durable_only = name is not None
        cur = Cursor.__new__(Cursor)
        cur._init(self, self.start_offset, bool(durable_only))
        cur.name = name
        store = None if name is None else self._positions(create=False)
        stored = None if store is None else store.get(name)
        if stored is not None:
            position = stored[0]
            end = self.end_offset
            if position > end:
                raise OffsetOutOfRangeError(
                    f"subscriber {name!r}: committed position {position} is beyond the end of "
                    f"{self.path} ({end}): records it had read are gone (a repair cut the log, or "
                    f"a power loss in 'none' mode); rewind it with log.set_position({name!r}, "
                    f"offset) or `tidelog positions set`")
            cur._set_position(position)    # below start_offset: its next read says so
        else:
            named = isinstance(start, str) and start in ("earliest", "latest")
            cur.seek(start if named else cur._resolve(start, "start"))
        return cur

    def _positions(self, create=True):
        """The positions store (LMDB), opened on first use; None when there is none yet and
        create is False (reading positions never creates the store)."""
        if self._store is None:
            with self._store_lock:
                if self.closed:
                    raise LogClosedError(f"{self.path}: the log is closed")
                if self._store is None:
                    if not create and not PositionStore.exists(self.path):
                        return None
                    self._store = PositionStore(self.path)
        return self._store

    def _check_commit_offset(self, offset, what="offset"):
        offset = _args.offset(offset, what)
        start, durable = self.start_offset, self.durable_offset
        if not start <= offset <= durable:
            raise ValueError(f"{what}: {offset} is outside [start_offset, durable_offset] = "
                             f"[{start}, {durable}]" + (
                                 " (a committed position never runs ahead of what survives a "
                                 "power loss: the writer must sync first)"
                                 if offset > durable else ""))
        return offset

    def positions(self):
        """{name: position} of every named subscriber (replayers included)."""
        if self.closed:
            raise LogClosedError(f"{self.path}: the log is closed")
        store = self._positions(create=False)
        return {} if store is None else {k: v[0] for k, v in sorted(store.all().items())}

    def position_info(self):
        """{name: (position, commit time in ns since the epoch)} of every subscriber."""
        if self.closed:
            raise LogClosedError(f"{self.path}: the log is closed")
        store = self._positions(create=False)
        return {} if store is None else dict(sorted(store.all().items()))

    def lag(self):
        """{name: end_offset - position} per named subscriber."""
        positions = self.positions()
        end = self.end_offset
        return {k: end - v for k, v in positions.items()}

    def set_position(self, name, offset):
        """Store `offset` as subscriber `name`'s position (an operator rewinding or skipping a
        consumer); it must lie in [start_offset, durable_offset]."""
        check_name(name)
        self._positions().put(name, self._check_commit_offset(offset))

    def delete_position(self, name):
        """Forget subscriber `name`. KeyError if it has no position."""
        if self.closed:
            raise LogClosedError(f"{self.path}: the log is closed")
        check_name(name, existing=True)      # also one an older tidelog let in
        store = self._positions(create=False)
        if store is None or not store.delete(name):
            raise KeyError(f"no subscriber named {name!r} in {self.path}")

    def segments(self):
        """[(base_offset, path)] of the segment files, oldest first."""
        if self.closed:
            raise LogClosedError(f"{self.path}: the log is closed")
        return self._segment_info()

    def read_batch(self, offset, max_records=65536, *, max_bytes=None):
        """Up to `max_records` consecutive records from `offset` as a RecordBatch (zero-copy,
        records of one segment: it may hold fewer; about `max_bytes` of values, at least one
        record), as Cursor.read_batch without a cursor. Every record appended is visible, as to
        read(). `offset` must lie in [start_offset, end_offset] (end_offset: an empty batch),
        else OffsetOutOfRangeError."""
        if isinstance(offset, str):
            raise TypeError("offset: expected an int, not str")
        offset = _args.offset(offset)
        max_records = _args.count(max_records, "max_records")
        max_bytes = None if max_bytes is None else _args.count(max_bytes, "max_bytes")
        if self.closed:
            raise LogClosedError(f"{self.path}: the log is closed")
        start, end = self.start_offset, self.end_offset
        if not start <= offset <= end:
            raise OffsetOutOfRangeError(f"offset {offset} is outside [{start}, {end}] of "
                                        f"{self.path}")
        cur = Cursor.__new__(Cursor)
        cur._init(self, offset, False)
        return cur.read_batch(max_records, max_bytes)

    def stats(self):
        """What `tidelog info` shows, as a dict:

        - "path" (str), "start_offset", "end_offset", "durable_offset", "records" (int; read
          in that order: durable <= end and start <= end even while a writer appends)
        - "segments": how many segment files; "segment_file_bytes": their sizes added up
        - "disk_bytes": bytes the log's files take on disk (allocated blocks: segments,
          indexes, control page, positions store)
        - "subscribers": {name: {"position", "lag" (end_offset - position),
          "committed_ns" (commit time, ns since the epoch)}} of every named subscriber, or None
          when the positions store cannot be read; then "subscribers_error" holds the
          exception (TidelogError or OSError) that said why, else None.
        A file that retention removes meanwhile is left out of the sizes."""
        if self.closed:
            raise LogClosedError(f"{self.path}: the log is closed")
        start, durable, end = self.start_offset, self.durable_offset, self.end_offset
        segs = self.segments()
        try:
            subs, problem = self.position_info(), None
        except (TidelogError, OSError) as exc:      # the rest is still worth showing
            subs, problem = None, exc
        seg_bytes = 0
        for _, p in segs:
            try:
                seg_bytes += os.stat(p).st_size
            except FileNotFoundError:
                pass                    # retention removed it meanwhile
        disk = 0
        for d in (self.path, os.path.join(self.path, POSITIONS_DIR)):
            try:
                with os.scandir(d) as entries:
                    for e in entries:
                        try:
                            if e.is_file():
                                disk += e.stat().st_blocks * 512
                        except FileNotFoundError:
                            pass
            except (FileNotFoundError, NotADirectoryError, PermissionError):
                pass                    # no positions store (yet), or an unreadable one
        return {
            "path": self.path, "start_offset": start, "end_offset": end,
            "durable_offset": durable, "records": end - start,
            "segments": len(segs), "segment_file_bytes": seg_bytes, "disk_bytes": disk,
            "subscribers": None if subs is None else {
                name: {"position": pos, "lag": end - pos, "committed_ns": t}
                for name, (pos, t) in subs.items()},
            "subscribers_error": problem,
        }


def _flush_loop(ref, stop, interval):
    """'batch' durability: sync at least every `interval` seconds while there is something new."""
    while not stop.wait(interval):
        log = ref()
        if log is None:
            return
        try:
            # appenders run an overdue sync themselves; this covers the quiet moments
            native = log._native_flusher
            if native is not None and native[0]:
                continue                # the native flusher has it
            if log.durable_offset < log.end_offset and log._since_sync >= interval * 0.5:
                log.sync()
        except Exception:          # closed or failed: the writer reports it to its callers
            return
        finally:
            del log


def open(path, *, readonly=False, create=True, segment_bytes=256 << 20, durability="batch",
         sync_interval=0.005, retain_bytes=None, retain_seconds=None, repair=None,
         max_unsynced_bytes=MAX_UNSYNCED_BYTES):
    """Open (or create) the log in directory `path`. See API.md for every argument.

    repair="truncate" (an operator's opt-in, see `tidelog repair`): check every frame from the
    start and cut the log at the first damage, deleting what follows it, acknowledged or not;
    `log.repaired` then says where it cut (path, position, offset, problem) or is None.

    max_unsynced_bytes ("batch" mode): an append that finds the writer this many bytes of frames
    ahead of durable_offset waits until a sync brings it back under (None: never waits), and the
    flusher starts a sync early at half of it; this bounds what a power loss can take under any
    load (README, "Durability")."""
    return Log(path, readonly=readonly, create=create, segment_bytes=segment_bytes,
               durability=durability, sync_interval=sync_interval, retain_bytes=retain_bytes,
               retain_seconds=retain_seconds, repair=repair, max_unsynced_bytes=max_unsynced_bytes)
