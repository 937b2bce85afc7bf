"""Log: open, append, read, cursor, sync, close. The hot paths are the core's (tidelog._core)."""

from __future__ import annotations

import os
import threading
import time
import warnings
import weakref
from typing import TYPE_CHECKING, Literal, Union, overload

Compression = Literal["zstd", "lz4", "none"]

from tidelog import _args, _core
from tidelog.codecs import codec_id
from tidelog.cursor import Cursor
from tidelog.errors import LogClosedError, LogFailedError, OffsetOutOfRangeError, TidelogError
from tidelog.positions import POSITIONS_DIR, PositionStore, check_name

if TYPE_CHECKING:
    from typing import Any, Iterator, NoReturn, SupportsIndex

    from typing_extensions import Self, TypeAlias

    #: what open() takes as a path: a str, bytes or os.PathLike
    PathArg: TypeAlias = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]
    Durability: TypeAlias = Literal["none", "batch", "always"]

__all__ = ["Log", "open"]

DURABILITY_MODES = ("none", "batch", "always")
MIN_SEGMENT_BYTES = 4096          # one page of frames at least
MAX_SEGMENT_BYTES = _core.MAX_SEGMENT_BYTES_   # positions are stored as u32 (docs/FORMAT.md)
MAX_UNSYNCED_BYTES = 4 << 20      # "batch" mode: appends wait this far ahead of durable_offset
MIN_UNSYNCED_BYTES = 4096

_logs: weakref.WeakSet[Log] = weakref.WeakSet()         # every Log of this process (for the fork hook)


def _after_fork_in_child() -> None:
    # a lock another thread held at fork() stays held for good in the child (that thread is
    # not there to release it): every Log's store lock starts afresh
    for log in list(_logs):
        log._store_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _check_path(path: object) -> str:
    if isinstance(path, (bytes, os.PathLike)):
        path = os.fsdecode(path)
    if not isinstance(path, str):
        raise TypeError(f"path: expected a str or os.PathLike, not {type(path).__name__}")
    if not path:
        raise ValueError("path: empty")
    return os.path.abspath(path)


def _check_unsynced(value: SupportsIndex | None) -> int | None:
    """open()'s max_unsynced_bytes: None (no bound) or a byte count of at least one page."""
    if value is None:
        return None
    return _args.count(value, "max_unsynced_bytes", MIN_UNSYNCED_BYTES)


class Log(_core.LogCore):
    """An append-only log in a directory. Get one from :func:`tidelog.open` (same arguments).

    Every record has an offset, a dense int64 assigned at append (0, 1, 2, ...): the log's
    logical clock. The log holds the records ``[start_offset, end_offset)``.

    Attributes (read-only; on a reader they follow the writer, in any process):

    - ``start_offset`` (int): the first offset still in the log (grows with retention).
    - ``end_offset`` (int): the offset the next append gets.
    - ``durable_offset`` (int): every record below it is on stable storage ("acknowledged").
    - ``len(log)`` (int): ``end_offset - start_offset``.
    - ``path`` (str): the log's directory, absolute.
    - ``readonly`` (bool), ``durability`` (str), ``segment_bytes`` (int, bytes),
      ``sync_interval`` (float, seconds), ``retain_bytes`` (int or None),
      ``retain_seconds`` (float or None), ``max_unsynced_bytes`` (int or None): as opened.
    - ``closed`` (bool): :meth:`close` was called.
    - ``failure``: the :exc:`LogFailedError` that stopped the writer (a sync failed), or None.
    - ``repaired``: after ``open(repair="truncate")``, (path, byte position, offset, problem)
      of the cut, else None.

    Reading any of the offsets, or calling any method below, on a closed log raises
    :exc:`LogClosedError`; a writer used in a ``fork()`` child raises :exc:`LogForkedError`.

    Writing (the core's methods; a reader gets :exc:`TidelogError` for each):

    ``append(value, *, key=None, timestamp=None, headers=None) -> int``
        Append one record and return its offset. `value` and `key` (None: no key) are any
        bytes-like object (bytes, bytearray, memoryview, numpy array), stored verbatim; a
        ``str`` gets TypeError. `timestamp` (int, nanoseconds since the epoch) defaults to the
        time of the append. `headers`: the record's headers, a dict ``{str: bytes}`` or a list
        of ``(str, bytes)`` pairs (Kafka's shape: names may repeat, order is kept; values any
        bytes-like object; names must be valid UTF-8 text); read back as ``Record.headers``.
        A record without headers costs nothing extra. A value too large for a segment gets ValueError. In
        ``"always"`` mode it returns once the record is durable. :exc:`LogFailedError` once a
        sync failed; :exc:`LogFullError` when the disk is full.

    ``append_batch(values, *, keys=None, timestamps=None, atomic=True, headers=None, int_headers=None, value_offsets=None) -> int``
        Append many records in one call and return the first one's offset (`end_offset` for
        an empty batch); they get consecutive offsets. `values`: an iterable of bytes-like
        objects, or a numpy array (2-D uint8: one record per row; 1-D of a fixed-size dtype:
        one per element). `keys`: a sequence of bytes-like or None, one per value.
        `timestamps`: a sequence of ints (ns), one per value. `headers`: a sequence of one
        record's headers each (as for ``append``; None or empty: none), one per value.
        `int_headers`: a dict {name: a sequence of ints (int64), one per value}; each record
        gets, after its own headers, a header of that name whose value is its int in decimal
        ASCII (e.g. a source position, with no Python object per record). `value_offsets`:
        n + 1 ints (or an int64 array) that make `values` one bytes-like object holding the n
        values back to back, value i at ``values[value_offsets[i]:value_offsets[i + 1]]``
        (Arrow's binary layout; no object per value; a strided buffer is copied). Atomic:
        after any crash the batch is in the log whole or not at all, and readers never see
        part of it; so it must fit in one segment (else ValueError), unless ``atomic=False``
        splits it across segments with prefix semantics. A bad element gets TypeError and
        nothing of the batch is appended.

    ``sync() -> int``
        Make everything appended so far durable (fdatasync, shared with concurrent callers)
        and return `durable_offset`. :exc:`LogFailedError` if the sync fails: the writer stops
        for good (fail-stop, never retried; reopen the log to recover from what is on disk).

    ``truncate_before(offset) -> int``
        Delete the whole segments that lie entirely below `offset` (never the active one) and
        return the new `start_offset`. Views of deleted segments stay valid; a read below the
        new start gets :exc:`OffsetOutOfRangeError`. ValueError if `offset` > `end_offset`.

    Reading:

    ``read(offset) -> Record``
        The record at `offset` (any integer, numpy's too), CRC-checked.
        :exc:`OffsetOutOfRangeError` (an IndexError) outside ``[start_offset, end_offset)``;
        :exc:`CorruptLogError` when the record is damaged on disk.

    ``offset_for_time(timestamp) -> int``
        The first offset whose record has a timestamp >= `timestamp` (int, ns since the
        epoch), or `end_offset` when there is none. Timestamps may go backwards.
    """

    def __init__(self, path: PathArg, *, readonly: bool = False, create: bool = True,
                 segment_bytes: SupportsIndex = 256 << 20, durability: Durability = "batch",
                 sync_interval: float = 0.005, retain_bytes: SupportsIndex | None = None,
                 retain_seconds: float | None = None, repair: Literal["truncate"] | None = None,
                 max_unsynced_bytes: SupportsIndex | None = MAX_UNSYNCED_BYTES,
                 compression: Compression | None = None) -> None:
        path = _check_path(path)
        if compression is not None:
            codec_id(compression)                   # ValueError naming the argument
        if repair not in (None, "truncate"):
            raise ValueError(f"repair: None or 'truncate', not {repair!r}")
        if repair is not None and readonly:
            raise ValueError("repair: a repair needs a writer (readonly=False)")
        # the writer's settings cannot take effect on a reader: refused, never silently dropped
        for name, value in (("compression", compression), ("retain_bytes", retain_bytes),
                            ("retain_seconds", retain_seconds)):
            if value is not None and readonly:
                raise ValueError(f"{name}: a writer's setting (readonly=False); a reader "
                                 f"takes the log as it is")
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
        self._flusher: threading.Thread | None = None
        self._store: PositionStore | None = None
        self._store_lock = threading.Lock()
        _logs.add(self)
        self._stop_flusher = threading.Event()
        self._interval_ns = int(self.sync_interval * 1e9)
        self.max_unsynced_bytes = _check_unsynced(max_unsynced_bytes)
        self._max_unsynced = -1 if self.max_unsynced_bytes is None else self.max_unsynced_bytes
        self._open(path, bool(readonly), bool(create), segment_bytes, durability, repair)
        if not readonly:
            try:
                self._setup_codec(compression)      # MissingCodecError naming the extra
            except BaseException:
                self._abandon()
                raise
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


    def wait_durable(self, offset: SupportsIndex, timeout: float | None = None) -> bool:
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

    def _crash(self) -> None:
        """For tests: stop as a killed process would (no sync, no clean shutdown)."""
        if self._flusher is not None:
            self._stop_flusher.set()
            self._flusher.join()
            self._flusher = None
        self._abandon()

    def close(self) -> None:
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

    def __enter__(self) -> Self:
        if self.closed:
            raise LogClosedError(f"{self.path}: the log is closed")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> NoReturn:
        raise TypeError(f"a tidelog Log cannot be pickled (it holds this process's mappings "
                        f"and locks): send its path {self.path!r} and open it in the other "
                        f"process (readonly=True for a reader)")

    def __del__(self) -> None:
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

    def __repr__(self) -> str:
        if self.closed:
            return f"<tidelog.Log {self.path!r} closed>"
        mode = "readonly" if self.readonly else self.durability
        return (f"<tidelog.Log {self.path!r} {mode} [{self.start_offset}, {self.end_offset}) "
                f"durable<{self.durable_offset}>")

    def cursor(self, start: SupportsIndex | Literal["earliest", "latest"] = "earliest", *,
               name: str | None = None, durable_only: bool | None = None) -> Cursor:
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
        store = None if name is None else self.position_store(create=False)
        stored = None if store is None or name is None else store.get(name)
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
            cur.seek(start if named else cur.resolve_offset(start, "start"))
        return cur

    @overload
    def position_store(self, create: Literal[True] = True) -> PositionStore: ...
    @overload
    def position_store(self, create: bool) -> PositionStore | None: ...

    def position_store(self, create: bool = True) -> PositionStore | None:
        """The positions store (a tidelog.positions.PositionStore in LMDB), opened on first use;
        None when there is none yet and create is False (reading positions never creates the
        store). For tidelog's own modules (named cursors, replayers): not advertised."""
        if self._store is None:
            with self._store_lock:
                if self.closed:
                    raise LogClosedError(f"{self.path}: the log is closed")
                if self._store is None:
                    if not create and not PositionStore.exists(self.path):
                        return None
                    self._store = PositionStore(self.path)
        return self._store

    _positions = position_store     # the older spelling (tests reach the store through it)

    def check_commit_offset(self, offset: SupportsIndex, what: str = "offset") -> int:
        """`offset` as an int if a position may be committed there: in [start_offset,
        durable_offset]; else TypeError/ValueError naming `what`. (Named cursors use it.)"""
        offset = _args.offset(offset, what)
        start, durable = self.start_offset, self.durable_offset
        if not start <= offset <= durable:
            raise ValueError(f"{what}: {offset} is outside [start_offset, durable_offset] = "
                             f"[{start}, {durable}]" + (
                                 " (a committed position never runs ahead of what survives a "
                                 "power loss: the writer must sync first)"
                                 if offset > durable else ""))
        return offset

    def positions(self) -> dict[str, int]:
        """{name: position} of every named subscriber (replayers included)."""
        if self.closed:
            raise LogClosedError(f"{self.path}: the log is closed")
        store = self.position_store(create=False)
        return {} if store is None else {k: v[0] for k, v in sorted(store.all().items())}

    def position_info(self) -> dict[str, tuple[int, int]]:
        """{name: (position, commit time in ns since the epoch)} of every subscriber."""
        if self.closed:
            raise LogClosedError(f"{self.path}: the log is closed")
        store = self.position_store(create=False)
        return {} if store is None else dict(sorted(store.all().items()))

    def lag(self) -> dict[str, int]:
        """{name: end_offset - position} per named subscriber."""
        positions = self.positions()
        end = self.end_offset
        return {k: end - v for k, v in positions.items()}

    def set_position(self, name: str, offset: SupportsIndex) -> None:
        """Store `offset` as subscriber `name`'s position (an operator rewinding or skipping a
        consumer); it must lie in [start_offset, durable_offset]."""
        check_name(name)
        self.position_store().put(name, self.check_commit_offset(offset))

    def delete_position(self, name: str) -> None:
        """Forget subscriber `name`. KeyError if it has no position."""
        if self.closed:
            raise LogClosedError(f"{self.path}: the log is closed")
        check_name(name, existing=True)      # also one an older tidelog let in
        store = self.position_store(create=False)
        if store is None or not store.delete(name):
            raise KeyError(f"no subscriber named {name!r} in {self.path}")

    def segments(self) -> list[tuple[int, str]]:
        """[(base_offset, path)] of the segment files, oldest first."""
        if self.closed:
            raise LogClosedError(f"{self.path}: the log is closed")
        return self._segment_info()

    # -------------------------------------------------------------- for tidelog's own modules
    # Public names for what cursors and the operator tools (tidelog.tools) need from the core;
    # documented, not advertised. The core still spells these with an underscore.

    wait_for = _core.LogCore._wait_for              # (position, durable, timeout, spin, cancel)
    wake_sleepers = _core.LogCore._wake_sleepers
    inherited_copy = _core.LogCore._inherited_copy  # True in a fork() child for a parent's Log

    def index_problems(self) -> list[tuple[str, int]]:
        """[(index file, entries that disagree with the frames)] of the segments whose .idx or
        .tix is missing, damaged or wrong (indexes are hints: lookups still work, slower). Reads
        every frame's length, not its CRC (`tidelog verify`)."""
        return self._index_problems()

    def rebuild_indexes(self) -> int:
        """Rewrite the index files of every sealed segment whose indexes disagree with its
        frames; returns how many segments it rewrote. Needs the writer (`tidelog repair`)."""
        return self._rebuild_indexes()

    def salvage(self) -> Iterator[_core.Record]:
        """Yield every CRC-valid record in offset order, skipping damage (offsets may then have
        gaps): an operator's last resort (`tidelog repair --salvage-to`)."""
        return self._salvage()

    def read_batch(self, offset: SupportsIndex, max_records: SupportsIndex = 65536, *,
                   max_bytes: SupportsIndex | None = None) -> _core.RecordBatch:
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

    def scan_arrow(self, start: SupportsIndex | Literal["earliest", "latest"] = "earliest",
                   stop: SupportsIndex | None = None, *, batch_records: SupportsIndex = 65536,
                   value_type: object = None, headers: bool = False, name: str | None = None,
                   durable_only: bool | None = None) -> Any:
        """The records [start, stop) as a ``pyarrow.RecordBatchReader``: the stream DuckDB
        (``duckdb.sql("select count(*) from reader")``), Polars and ``pyarrow.parquet`` consume
        without copying. `stop` None: the end as of the call (the durable end for a named or
        durable-only scan). Columns and zero-copy as :meth:`Cursor.read_arrow`; at most
        `batch_records` records per batch, one batch per frame. `name` and `durable_only` as in
        :meth:`cursor` (a named scan starts at the name's committed position and does not
        commit: use ``log.cursor(name=...).scan_arrow()`` and commit() to move it).
        Needs pyarrow (``pip install 'tidelog[arrow]'``)."""
        from tidelog import arrow
        if isinstance(stop, str):
            raise TypeError("stop: expected an int offset or None, not str")
        stop = None if stop is None else _args.offset(stop, "stop")
        batch_records = _args.count(batch_records, "batch_records")
        cur = self.cursor(start, name=name, durable_only=durable_only)
        try:
            return arrow.scan_arrow(cur, stop, batch_records, value_type, headers, close=True)
        except BaseException:
            cur.close()
            raise

    def stats(self) -> dict[str, Any]:
        """What `tidelog info` shows, as a dict:

        - "path" (str), "start_offset", "end_offset", "durable_offset", "records" (int; read
          in that order: durable <= end and start <= end even while a writer appends)
        - "segments": how many segment files; "segment_file_bytes": their sizes added up
        - "disk_bytes": bytes the log's files take on disk (allocated blocks: segments,
          indexes, control page, positions store)
        - "compression": the codec new frames get ("zstd", "lz4"), or None (uncompressed): the
          log's stored setting (see :func:`open`)
        - "subscribers": {name: {"position", "lag" (end_offset - position),
          "committed_ns" (commit time, ns since the epoch)}} of every named subscriber, or None
          when the positions store cannot be read; then "subscribers_error" holds the
          exception (TidelogError or OSError) that said why, else None.

        A file that retention removes meanwhile is left out of the sizes. Raises
        :exc:`LogClosedError` once the log is closed."""
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
            "compression": self.compression,
            "subscribers": None if subs is None else {
                name: {"position": pos, "lag": end - pos, "committed_ns": t}
                for name, (pos, t) in subs.items()},
            "subscribers_error": problem,
        }


def _flush_loop(ref: weakref.ReferenceType[Log], stop: threading.Event, interval: float) -> None:
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


def open(path: PathArg, *, readonly: bool = False, create: bool = True,
         segment_bytes: SupportsIndex = 256 << 20, durability: Durability = "batch",
         sync_interval: float = 0.005, retain_bytes: SupportsIndex | None = None,
         retain_seconds: float | None = None, repair: Literal["truncate"] | None = None,
         max_unsynced_bytes: SupportsIndex | None = MAX_UNSYNCED_BYTES,
         compression: Compression | None = None) -> Log:
    """Open (or create) the log in directory `path` and return it as a :class:`Log`.

    A log is a directory of segment files, named by their first offset. One process at a time
    may write it (a writer); any number of readers (``readonly=True``), in any process, read it
    while the writer appends. Use the log as a context manager, or call :meth:`Log.close`.

    Arguments (all but `path` keyword-only):

    - `path` (str, bytes or os.PathLike): the log's directory. Created with its parents when
      missing, unless `readonly` or ``create=False``.
    - `readonly` (bool, default False): open as a reader: nothing is created or written, no
      lock is taken; `end_offset`, `durable_offset` and `start_offset` follow the writer.
    - `create` (bool, default True): False makes a missing log an error instead.
    - `segment_bytes` (int, bytes, default 256 MiB; 4096 at least): the writer rolls to a new
      segment file once the current one would pass this size; a batch must fit in one segment
      (see :meth:`Log.append_batch`). Applies to new segments; existing ones keep their size.
    - `durability` (str, default ``"batch"``): when appends reach stable storage.
      ``"none"``: only when you call :meth:`Log.sync` or :meth:`Log.close` (a process crash
      loses nothing, a power loss everything since the last sync). ``"batch"``: a background
      flusher syncs at least every `sync_interval` seconds while there is something new
      (group commit: concurrent syncs share one fdatasync). ``"always"``: :meth:`Log.append`
      returns only once its record is durable.
    - `sync_interval` (float, seconds, default 0.005): the ``"batch"`` flusher's period; finite
      and positive.
    - `retain_bytes` (int, bytes, default None: no limit): retention; delete the oldest whole
      segments while the log is larger than this (each segment counts its full size). Applied
      at open and as segments roll; never the active segment.
    - `retain_seconds` (float, seconds, default None: no limit): retention; delete whole
      segments whose newest record is older than this.
      (`retain_bytes`, `retain_seconds` and `compression` are a writer's: with ``readonly=True``
      any of them other than None is a :exc:`ValueError`, never silently dropped.)
    - `repair` (``None`` or ``"truncate"``, default None): ``"truncate"`` (an operator's
      opt-in, as ``tidelog repair --truncate`` does) checks every frame from the start and
      cuts the log at the first damage, deleting everything after it, acknowledged or not;
      `log.repaired` then says where it cut (path, byte position, offset, problem), or is None.
      Needs a writer.
    - `max_unsynced_bytes` (int, bytes, default 4 MiB; None: no bound; 4096 at least):
      ``"batch"`` mode's backpressure: an append that finds the writer this many bytes of
      frames ahead of `durable_offset` waits until a sync brings it back under, and the flusher
      starts a sync early at half of it. This bounds what a power loss can take under any load.
    - `compression` (``"zstd"``, ``"lz4"``, ``"none"`` or None, default None): how the writer
      compresses new frames, per log. None keeps the log's own setting (stored in its control
      page; none for a new log); a choice is stored and kept by later writers that pass None.
      Frames of at least 512 bytes (an ``append_batch``, a large record) are compressed whole
      when that makes them smaller; readers need no setting (each frame says its codec) but
      the codec's package: the extras ``tidelog[zstd]`` (zstandard) and ``tidelog[lz4]`` (lz4);
      a missing one raises :exc:`MissingCodecError` naming the extra. Values of compressed
      frames are read from one decompressed copy per frame, which the records and batches
      keep: zero-copy then means no copy after that decompression.

    Returns the open :class:`Log`; after opening, ``durable_offset == end_offset`` (recovery
    syncs what it keeps and cuts a torn tail).

    Raises :exc:`LogLockedError` when another writer (in any process, this one included) has
    the log open; :exc:`LogNotFoundError` when there is no log and `readonly` or
    ``create=False``; :exc:`NotALogError` when `path` is a file or a directory holding
    something else; :exc:`FormatVersionError` for a log of a newer format;
    :exc:`CorruptLogError` when damage lies below the durable point (never dropped silently:
    see ``tidelog verify`` and ``tidelog repair``); :exc:`LogFullError` when the disk is full;
    TypeError or ValueError, naming the argument, for a bad argument."""
    return Log(path, readonly=readonly, create=create, segment_bytes=segment_bytes,
               durability=durability, sync_interval=sync_interval, retain_bytes=retain_bytes,
               retain_seconds=retain_seconds, repair=repair, max_unsynced_bytes=max_unsynced_bytes,
               compression=compression)
