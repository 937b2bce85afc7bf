# LogCore: one open log, writer or reader. It holds every field (the parts below are functions over
# it, one concern per file) and owns the lifecycle: open (composing the parts), the state checks
# and the writer lock's hand-offs, close / teardown / abandon, the fork guard, and the entry points
# the Python layer calls. The parts: control.pxi (the control page, publish and wait), segset.pxi
# (segment set, lookup, mapping LRU), recovery.pxi (open-time checks and operator tools),
# appender.pxi (the active segment: frames, staging, pwrite, roll, index notes), durability.pxi
# (group commit, native flusher and pretoucher control, fail-stop), retention.pxi, lookup.pxi
# (random reads and time lookup).
# Writes: _closed, _closing, _wstate, _busy, _wlock_tid, _close_deferred, the descriptors and
# mappings (_lock_fd, _dir_fd, _ctl, _ctl_map), the settings fixed at open (_mode, _seg_bytes, ...).
#
# Lifecycle (who may touch what, when): close() sets _closing and _wstate, takes _wlock (a batch
# or roll in progress finishes first), syncs, waits for a syncing leader, then sets _closed and
# tears down. Anything that may let another thread run - a Python call, an os call, a lock that
# blocks, an allocation that may run the GC (finalizers) - may let close() run meanwhile; after it
# the code re-checks through _check_open() (readers) or _check_write() (writers) before it touches
# the control page, the segment list or the writer's state again. The control page stays mapped
# until the object is collected, so a check missed would read a stale page, never an unmapped one.
# A Log belongs to the process that opened it: in a fork() child its copy is "inherited"
# (tl_fork_gen moved on): a reader reads on; a writer refuses everything with LogForkedError; and
# close() or GC of either lets go of this process's descriptors and mappings and writes nothing
# the parent shares (no sync, no control page, no wake-up, no lock its threads may have held).
# Code may also run inside a call in the same thread: a signal handler (at any Python-level call,
# e.g. threading.Condition's methods; it may raise, e.g. KeyboardInterrupt) or a finalizer (at any
# allocation). So: the leader's epilogue of a sync gives up its leadership before any such call;
# the thread that holds _wlock or leads a sync is known (_wlock_tid, _sync_tid): a writing call
# it makes again from inside (which would wait for itself) gets RuntimeError at once, and a
# close() it makes from inside is deferred to the moment it leaves the writer.

import stat as _stat
from libc.stdint cimport INT64_MAX

cdef extern from "Python.h":
    unsigned long PyThread_get_thread_ident()

cdef enum:
    MODE_NONE = 0
    MODE_BATCH = 1
    MODE_ALWAYS = 2

from time import monotonic as _monotonic
MAX_MAPPED_SEGMENTS = 4        # sealed segments a Log keeps mapped (RSS and vm.max_map_count bound)
CTL_PERSIST_SECONDS = 1.0       # the control page (durable checkpoint) is synced at most this often
SEGMENT_RE = re.compile(r"^(\d{20})\.seg$")
CONTROL_NAME = "tidelog.ctl"
SYNC_WAIT_SLICE = 0.1           # a thread waiting for a sync leader looks again at least this often
LOCK_NAME = "tidelog.lock"


cdef class LogCore:
    cdef readonly str path
    cdef bint _readonly
    cdef bint _closed
    cdef int _wstate            # 0: appends allowed; else closed / read-only / failed
    cdef object _failure        # the LogFailedError that stopped the writer
    cdef int _mode
    cdef public int64_t _retain_bytes   # retention policies (-1: none), set before _open
    cdef public int64_t _retain_ns
    cdef int _waiting           # threads of this process in wait_for
    cdef list _lru              # sealed segments this object mapped, latest last: reads, checks
                                # at open, retention and rolls all go through touch_segment, so at most
                                # _max_mapped stay mapped however many segments the log has
    cdef public Py_ssize_t _max_mapped   # at most this many of them stay mapped
    cdef bint _ctl_rw           # the control page is mapped writable (sleepers can set the flag)
    cdef Mapping _ctl_map
    cdef char* _ctl
    cdef int _lock_fd
    cdef int _dir_fd
    cdef list _segments
    cdef int64_t* _bases
    cdef Py_ssize_t _nbases
    cdef Py_ssize_t _bases_cap
    cdef int64_t _seg_bytes
    # writer state: the active segment and where the next frame goes
    cdef Segment _active
    cdef char* _w
    cdef size_t _wpos
    cdef size_t _wcap       # where an append next asks prealloc.pxi for room: a mark ahead of
                            # the allocated end (allocation stays ahead of the pretoucher)
    cdef size_t _whard      # how far the writer may store (allocated, less a slack page)
    cdef int64_t _base
    cdef int64_t _next
    cdef int64_t _durable
    cdef int64_t _start
    cdef char* _idx
    cdef uint64_t _idx_stride   # the active segment's .idx stride (a power of two)
    cdef char* _tix
    cdef int64_t _max_ts
    cdef list _unsynced
    cdef bint _dir_dirty
    cdef bint _rolling          # roll() is under way: the native flusher gets no file (nf_update)
    cdef bint _busy
    cdef object _wlock
    cdef bint _syncing          # a leader is syncing (group commit, under _durable_cv)
    cdef list _sync_segs        # the segments that leader syncs (their descriptors it reads)
    cdef bint _closing
    cdef unsigned long _wlock_tid   # the thread holding _wlock (0: none)
    cdef unsigned long _sync_tid    # the thread leading a sync (0: none)
    cdef bint _close_deferred   # close() was called inside the writer by the thread in it
    cdef object _cv_lock        # _durable_cv's lock (taken directly: no Python-level code runs)
    cdef int _fork_gen          # tl_fork_gen at open: another value means a fork child's copy
    cdef long _pid              # the process that opened it (for messages)
    cdef int64_t _gen           # readers: the writer generation the segment list was loaded at
    cdef int64_t _last_sync_ns  # when the last successful sync started ("batch" mode deadline)
    cdef public int64_t _interval_ns   # "batch" mode: sync_interval in ns
    cdef double _ctl_persisted  # monotonic time the control page was last synced (no flusher)
    cdef int64_t _written       # bytes of frames written since open (the flusher reads it)
    cdef int64_t _durable_bytes # ... of them durable: _written when the last sync began
    cdef int64_t _kick_at       # at this _written, an append calls pressure ("batch" mode)
    cdef public int64_t _max_unsynced   # "batch" mode: appends wait this many bytes ahead of
                                        # the durable point (-1: never), set before _open
    cdef bint _unsafe_ack                       # tests' negative control only: never set it
    cdef tl_flusher* _nf        # "batch" mode: the native flusher thread (NULL otherwise)
    cdef tl_toucher* _tt        # the pretoucher thread (NULL: none, see start_pretoucher)
    cdef readonly object _durable_cv            # notified whenever durable_offset advances
    cdef object _repair                         # None, or "truncate": cut at the first damage
    cdef readonly object repaired               # what a repair cut: (path, position, offset, why)
    cdef char* _stage           # staging buffer for runs written with pwrite
    cdef size_t _scap
    cdef public Py_ssize_t _pwrite_min   # runs of at least this many bytes go through pwrite
    cdef public Py_ssize_t _frame_limit  # multi-form frames hold at most this many bytes (F)
    cdef readonly int _codec            # compression.pxi: CODEC of new frames (0: none)
    cdef object _zcompress              # ... its compress function (tidelog.codecs)
    cdef public bint _multi_form  # batches make multi-form frames (False, tests only: one
                                  # single-form frame per record, chained by MORE)
    cdef int64_t _rmax          # records the active segment may hold: (capacity - 64) / 8

    def __cinit__(self):
        self._lru = []
        self._max_mapped = MAX_MAPPED_SEGMENTS
        self._retain_bytes = -1
        self._retain_ns = -1
        self._pwrite_min = PWRITE_MIN_BYTES
        self._frame_limit = FRAME_LIMIT
        self._multi_form = True
        self._max_unsynced = -1
        self._kick_at = INT64_MAX
        self._lock_fd = -1
        self._dir_fd = -1
        self._closed = True
        self._wstate = 1
        self._segments = []
        self._unsynced = []

    def __dealloc__(self):
        if self._tt != NULL:
            tl_toucher_free(self._tt)
            self._tt = NULL
        if self._nf != NULL:
            tl_flusher_free(self._nf)
            self._nf = NULL
        free(self._stage)
        if self._bases != NULL:
            free(self._bases)
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
        if self._dir_fd >= 0:
            os.close(self._dir_fd)

    # ---------------------------------------------------------------- opening

    def _open(self, str path, bint readonly, bint create, int64_t segment_bytes, str durability,
              repair=None):
        self.path = path
        self._repair = repair
        self._readonly = readonly
        self._fork_gen = tl_fork_gen
        self._pid = getpid()
        self._seg_bytes = segment_bytes
        self._mode = {"none": MODE_NONE, "batch": MODE_BATCH, "always": MODE_ALWAYS}[durability]
        self._wlock = threading.Lock()
        self._cv_lock = threading.RLock()
        self._durable_cv = threading.Condition(self._cv_lock)
        ctl_path = os.path.join(path, CONTROL_NAME)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        except NotADirectoryError:
            raise NotALogError(f"{path}: a parent of this path is a file, not a directory") from None
        if st is None:
            if readonly or not create:
                raise LogNotFoundError(_errno.ENOENT, "no tidelog log at this path", path)
            os.makedirs(path, exist_ok=True)
        elif not _stat.S_ISDIR(st.st_mode):
            raise NotALogError(f"{path}: is a file, not a tidelog log directory")
        ctl_seen = os.path.exists(ctl_path)
        if not ctl_seen:
            # a creation that crashed leaves only our lock and control .tmp: finish it. The
            # listing is looked at again for the control file: a writer creating the log since
            # the look above has made it (then this is a log, not foreign files)
            entries = os.listdir(path)
            ctl_seen = CONTROL_NAME in entries
        if not ctl_seen:
            others = [e for e in entries if e not in (LOCK_NAME, CONTROL_NAME + ".tmp")]
            if others:
                raise NotALogError(f"{path}: holds files that are not a tidelog log "
                                   f"(no {CONTROL_NAME}; found {sorted(others)[0]!r})")
            if readonly or not create:
                raise LogNotFoundError(_errno.ENOENT, "no tidelog log at this path", path)
            self._lock()
            if not os.path.exists(ctl_path):
                create_control(self, ctl_path)
        else:
            check_control(self, ctl_path)
            if not readonly:
                self._lock()
        # readers map it writable too when they may: sleeping followers set the sleepers flag
        # (without, they poll)
        try:
            fd = os.open(ctl_path, os.O_RDWR | os.O_CLOEXEC)
            self._ctl_rw = True
        except PermissionError:
            if not readonly:
                raise
            fd = os.open(ctl_path, os.O_RDONLY | os.O_CLOEXEC)
            self._ctl_rw = False
        try:
            self._ctl_map = map_fd(fd, CONTROL_SIZE, self._ctl_rw, ctl_path)
        finally:
            os.close(fd)
        self._ctl = self._ctl_map.addr
        self._dir_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if readonly:
                load_segments(self)
            else:
                open_writer(self)
        except BaseException:
            # a failed open leaves the files as they are: no sync, no clean mark
            self._closed = False
            self._abandon()
            raise
        self._closed = False
        self._wstate = 2 if readonly else 0
        if not readonly:
            start_flusher(self)
        if not readonly and self._mode == MODE_NONE:
            start_pretoucher(self)

    def _pretouch_off(self):
        """Stop the pretoucher (bench/pretouch.py compares with and without it)."""
        return pretouch_off(self)

    @property
    def _pretoucher(self):
        """(bytes populated, errno of a failed populate or 0) of the pretoucher, or None."""
        if self._tt == NULL:
            return None
        return (tl_toucher_populated(self._tt), tl_toucher_err(self._tt))

    @property
    def _unsafe_ack_without_sync(self):
        return self._unsafe_ack

    @_unsafe_ack_without_sync.setter
    def _unsafe_ack_without_sync(self, bint v):
        self._unsafe_ack = v
        if self._nf != NULL:
            self._nf.unsafe_no_sync = v

    @property
    def _native_flusher(self):
        """(running with a file to sync, successful syncs) of the native flusher, or None."""
        if self._nf == NULL:
            return None
        return (bool(tl_flusher_active(self._nf)), self._nf.syncs)

    @property
    def _unsynced_bytes(self):
        """Bytes of frames written and not yet covered by a completed sync (as the bound on
        them counts: 0 after a sync of everything)."""
        return self._written - tl_load_i64_acquire(&self._durable_bytes)

    cdef _lock(self):
        fd = os.open(os.path.join(self.path, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        if flock(fd, LOCK_EX | LOCK_NB) != 0:
            err = errno
            os.close(fd)
            if err in (_errno.EWOULDBLOCK, _errno.EAGAIN):
                raise LogLockedError(f"{self.path}: another writer has this log open "
                                     f"(open it with readonly=True to read)")
            raise_oserror(err, self.path)
        self._lock_fd = fd

    # ---------------------------------------------------------------- state

    cdef inline bint _inherited(self) noexcept:
        """This object was opened by an ancestor of this process (it is a fork() child's copy)."""
        return self._fork_gen != tl_fork_gen

    cdef inline int _check_open(self) except -1:
        """The re-check for reading (see the lifecycle rule at the top): LogClosedError once
        close() began its teardown; LogForkedError for a writer inherited through fork()."""
        if self._closed or (self._fork_gen != tl_fork_gen and not self._readonly):
            self._raise_closed()
        return 0

    cdef inline int _check_write(self) except -1:
        """The re-check for writing: LogClosedError (closing too), LogFailedError, LogForkedError,
        or the read-only error, unless appends are allowed."""
        if self._wstate or self._fork_gen != tl_fork_gen:
            self._raise_state()
        return 0

    cdef inline int _check_entry(self) except -1:
        """_check_write() at the start of a writing call (append, append_batch, sync,
        truncate_before): also refuses one that a signal handler or a finalizer makes while its
        thread is inside the writer (holding _wlock or leading a sync): it would wait for itself."""
        if self._wstate or self._fork_gen != tl_fork_gen:
            self._raise_state()
        if self._wlock_tid or self._sync_tid:
            if self._inside():
                raise RuntimeError(
                    f"reentrant call inside {self.path}: a signal handler or finalizer called the "
                    f"log while its thread was inside the log's writer (a sync or a segment roll), "
                    f"which it would wait for; let the handler set a flag and write after the "
                    f"interrupted call returns (close() is allowed: it completes as the writer's "
                    f"call ends)")
        return 0

    cdef inline bint _inside(self):
        """The calling thread holds _wlock or leads a sync (so it may not wait for either)."""
        cdef unsigned long me = PyThread_get_thread_ident()
        return self._wlock_tid == me or self._sync_tid == me

    @property
    def _inside_writer(self):
        """True in a signal handler or finalizer that runs inside this thread's own sync or roll
        (Log.close() then does not wait for the flusher thread, which may wait for this one)."""
        return (self._wlock_tid != 0 or self._sync_tid != 0) and self._inside()

    cdef int _lock_writer(self) except -1:
        """Take _wlock (a roll, a batch, a retention: other threads wait in _wait_idle)."""
        self._wlock.acquire()
        self._wlock_tid = PyThread_get_thread_ident()
        self._busy = True
        return 0

    cdef int _unlock_writer(self) except -1:
        """Release _wlock; then a close() deferred meanwhile runs (the caller re-checks)."""
        self._busy = False
        self._wlock_tid = 0
        self._wlock.release()
        if self._close_deferred and self._sync_tid != PyThread_get_thread_ident():
            self._deferred_close()
        return 0

    cdef int _deferred_close(self) except -1:
        """The close() a signal handler or finalizer asked for inside this thread's writer call."""
        if self._close_deferred and not self._closed:
            self._close_deferred = False
            self._closing = False
            self._close()
        return 0

    cdef int _raise_closed(self) except -1:
        if not self._closed:
            raise LogForkedError(
                f"{self.path}: this Log was opened by process {self._pid}, and this process "
                f"({getpid()}) is a fork() child of it: a writer belongs to the process that "
                f"opened it, and its copy here must not touch the log; open the log in this "
                f"process (readonly=True to read)")
        raise LogClosedError(f"{self.path}: the log is closed")

    cdef int _raise_state(self) except -1:
        if self._inherited() and not self._readonly:
            self._raise_closed()
        if self._failure is None and not self._closed:
            native_failed(self)
        if self._closed or self._closing:
            raise LogClosedError(f"{self.path}: the log is closed")
        if self._failure is not None:
            raise LogFailedError(str(self._failure)) from self._failure
        if self._readonly:
            raise TidelogError(f"{self.path}: opened with readonly=True; appends need a writer")
        raise TidelogError("the writer is not available")

    cdef int _wait_idle(self) except -1:
        """Another thread is copying a large batch with the GIL released: wait for it."""
        while self._busy:
            self._wlock.acquire()
            self._wlock.release()
        self._check_write()
        return 0

    cdef inline void _publish(self, int field, int64_t value) noexcept nogil:
        """Store end_offset or durable_offset for readers, then wake any that sleep."""
        cdef char* w = self._ctl + wake_word(field)
        tl_store_i64_seqcst(self._ctl + field, value)
        if tl_load_u32_seqcst(w + 4):
            wake_sleepers(w)

    def _wait_for(self, int64_t position, bint durable, timeout=None, double spin=0.0,
                  cancel=None):
        """Block until end_offset (durable_offset when `durable`) > position: True; False when
        `timeout` seconds pass first or `cancel` (a threading.Event) is set. The GIL is released
        while waiting; signal handlers run (KeyboardInterrupt propagates)."""
        return wait_for(self, position, durable, timeout, spin, cancel)

    def _wake_sleepers(self):
        """Wake every sleeper on this log (they check their conditions again)."""
        return wake_own_sleepers(self)

    cdef inline int64_t _end_now(self) noexcept:
        if self._readonly:
            return ctl_get(self._ctl, CTL_END)
        return self._next

    cdef inline int64_t _start_now(self) noexcept:
        if self._readonly:
            return ctl_get(self._ctl, CTL_START)
        return self._start

    cdef inline int64_t _durable_now(self) noexcept:
        if self._readonly:
            return ctl_get(self._ctl, CTL_DURABLE)
        return self._durable

    @property
    def start_offset(self):
        """The first offset still in the log (int; grows with retention). On a reader it
        follows the writer. LogClosedError once closed."""
        self._check_open()
        return self._start_now()

    @property
    def end_offset(self):
        """The offset the next append gets (int): the log holds [start_offset, end_offset). On
        a reader it follows the writer. LogClosedError once closed."""
        self._check_open()
        return self._end_now()

    @property
    def durable_offset(self):
        """Every record below this offset (int) is on stable storage: acknowledged, it survives
        a power loss. On a reader it follows the writer. LogClosedError once closed."""
        self._check_open()
        return self._durable_now()

    @property
    def closed(self):
        """True once close() was called."""
        return self._closed

    @property
    def _inherited_copy(self):
        """True in a fork() child for a Log its parent opened (close() then only lets go)."""
        return self._inherited()

    @property
    def _since_sync(self):
        """Seconds since the last sync started."""
        return (tl_now_ns() - self._last_sync_ns) / 1e9

    @property
    def _durable_value(self):
        """durable_offset, also after close() (for waiters woken by it)."""
        return self._durable_now() if not self._closed else self._durable

    @property
    def failure(self):
        """The LogFailedError that stopped the writer (a sync failed), or None."""
        return self._failure

    @property
    def readonly(self):
        """True for a reader (opened with readonly=True)."""
        return self._readonly

    @property
    def segment_bytes(self):
        """The size in bytes at which the writer rolls to a new segment (open()'s argument)."""
        return self._seg_bytes

    @property
    def durability(self):
        """The durability mode: "none", "batch" or "always" (open()'s argument)."""
        return ("none", "batch", "always")[self._mode]

    def __len__(self):
        self._check_open()
        return self._end_now() - self._start_now()

    # ---- appending, retention (bodies: appender.pxi, retention.pxi)

    def truncate_before(self, offset):
        """Delete the whole segments that lie entirely below `offset` (never the active one);
        returns the new start_offset. Readers that still map a deleted segment keep their views
        (the file is unlinked, not unmapped); a read below start_offset gets
        OffsetOutOfRangeError."""
        return truncate_front(self, offset)

    def _apply_retention(self):
        """Apply retain_bytes / retain_seconds now (the writer also does at every roll)."""
        return apply_retention(self)

    def _setup_codec(self, compression):
        """A writer's codec for new frames (compression.pxi: codec_setup)."""
        self._check_open()
        codec_setup(self, compression)

    @property
    def compression(self):
        """The codec a writer gives new frames ("zstd", "lz4"), or None: uncompressed. For a
        reader, the log's stored setting (what its writer uses)."""
        cdef int64_t c = self._codec
        if self._readonly and self._ctl != NULL:
            c = ctl_get(self._ctl, CTL_CODEC)
        return {1: "zstd", 2: "lz4"}.get(c)

    def append(self, value, *, key=None, timestamp=None, headers=None):
        """Append one record and return its offset (int).

        `value` (bytes-like: bytes, bytearray, memoryview, numpy array; stored verbatim) and
        `key` (bytes-like, or None: no key) are copied into the log. `timestamp` (int,
        nanoseconds since the epoch; default: now) is stored with it. In "always" mode this
        returns once the record is durable; in "batch" mode it may wait while the writer is
        max_unsynced_bytes ahead of durable_offset. `headers` (default None): the record's
        headers, a dict {str: bytes-like} or an iterable of (str, bytes-like) pairs (names may
        repeat, order is kept), stored with it (FORMAT.md: columns C5..C9).

        Raises TypeError for a value or key that is not bytes-like (a str, say), ValueError
        for a record too large for a segment, LogFullError (an OSError) when the disk is full,
        LogFailedError once a sync failed (fail-stop), LogClosedError once closed, TidelogError
        on a reader and LogForkedError in a fork() child."""
        return append_one(self, value, key, timestamp, headers)

    def append_batch(self, values, *, keys=None, timestamps=None, bint atomic=True,
                     headers=None, int_headers=None, value_offsets=None):
        """Append many records in one call and return the first one's offset (int; end_offset
        for an empty batch); they get consecutive offsets.

        `values`: an iterable of bytes-like objects, or a numpy array (2-D uint8: a record per
        row; 1-D of a fixed-size dtype: a record per element). `keys`: a sequence of bytes-like
        objects or None, one per value (default None: no keys). `timestamps`: a sequence of ints
        (ns since the epoch), one per value (default: now). `atomic` (default True): after any
        crash the batch is in the log whole or not at all, and readers never see part of it; so
        it must fit in one segment (else ValueError). atomic=False splits a larger batch across
        segments, with prefix semantics. `headers`: a sequence of one record's headers each
        (as for append(); None or empty: none), one per value. `int_headers`: a dict
        {name: a sequence of ints (int64), one per value}: each record gets, after its own
        headers, a header of that name whose value is its int in decimal ASCII (a source
        position, say), in the dict's order; read back as any header is. `value_offsets`: a
        sequence of n + 1 ints (or an int64 array) that makes `values` one bytes-like object
        holding n values back to back (Arrow's binary layout): value i is
        values[value_offsets[i]:value_offsets[i + 1]]; no object per value (a strided buffer
        is copied: its bytes in order). They never decrease and stay within the buffer (else
        ValueError).

        Raises TypeError for a bad element (nothing of the batch is appended), ValueError for
        keys/timestamps of the wrong length or a batch too large, and what append() raises."""
        return append_many(self, values, keys, timestamps, atomic, headers, int_headers,
                           value_offsets)

    # ---- durability (bodies: durability.pxi) and closing

    def sync(self):
        """Make everything appended so far durable and return durable_offset (int).

        One fdatasync covers every segment written since the last sync (group commit: threads
        syncing at once share it). Raises LogFailedError if the sync fails: the writer stops
        for good (fail-stop; the sync is never retried; reopen the log to recover from what is
        on disk). LogClosedError once closed; TidelogError on a reader."""
        return sync_now(self)

    def _close(self):
        """Sync, mark a clean shutdown, release the lock. Idempotent; safe against appends and
        other close() calls in other threads (they wait for it or get LogClosedError)."""
        cdef char* ctl = self._ctl
        if self._closed:
            return
        if self._inherited():
            self._let_go()                   # a fork child's copy: touch nothing shared
            return
        if self._closing:
            return
        self._closing = True                 # new appends and syncs are refused from here on
        if not self._wstate:
            self._wstate = 1
        if (self._wlock_tid or self._sync_tid) and self._inside():
            # a signal handler or finalizer inside this thread's own roll or sync: waiting for
            # it would wait for ourselves; it closes the log as it ends (_unlock_writer,
            # end_sync). Appends are refused from now on.
            self._close_deferred = True
            return
        self._wlock.acquire()                # a batch or roll in progress finishes first
        self._wlock_tid = PyThread_get_thread_ident()
        try:
            err = tl_flusher_err(self._nf) if self._nf != NULL else 0
            stop_flusher(self)
            stop_pretoucher(self)          # (its pages ahead need not be synced below)
            if err and self._failure is None:
                try:                         # recorded, not raised: close() still closes
                    fail_stop(self, err, self._active.path if self._active is not None else self.path)
                except LogFailedError:
                    pass
            if not self._readonly and self._failure is None:
                sync_to(self, self._next)
                if self._active is not None and self._active.idx != NULL:
                    msync(self._active.idx_map.addr, self._active.idx_map.size, MS_SYNC)
                    msync(self._active.tix_map.addr, self._active.tix_map.size, MS_SYNC)
                ctl_set(ctl, CTL_ACTIVE_POS, <int64_t>self._wpos)
                ctl_set(ctl, CTL_ACTIVE_BASE, self._base)
                ctl_set(ctl, CTL_END, self._next)
                ctl_set(ctl, CTL_DURABLE, self._durable)
                if self._durable == self._next:      # only a fully synced log is "clean"
                    wr_u32(ctl + CTL_FLAGS, rd_u32(ctl + CTL_FLAGS) | CTL_FLAG_CLEAN)
                if msync(ctl, CONTROL_SIZE, MS_SYNC) != 0:
                    raise_oserror(errno, os.path.join(self.path, CONTROL_NAME))
        finally:
            self._cv_lock.acquire()              # a leader still syncing (an append in "always"
            try:                                 # mode that passed its check) finishes first;
                while self._syncing:             # none starts after this (it checks _closed)
                    self._durable_cv.wait(SYNC_WAIT_SLICE)
                self._closed = True
                self._wstate = 1
                self._durable_cv.notify_all()
            finally:
                self._cv_lock.release()
            self._teardown()
            self._wlock_tid = 0
            self._wlock.release()

    cdef _teardown(self):
        """Let go of descriptors, the segment list and the writer's mapping (_closed is set: a
        thread that raced this sees it at its next check). The control page stays mapped (one
        page) until the object goes, so that such a thread never touches an unmapped one."""
        stop_pretoucher(self)          # before any mapping goes
        if self._ctl != NULL and self._waiting and not self._inherited():
            self._wake_sleepers()        # this process's sleepers see the log closed
        for seg in self._segments:
            (<Segment>seg).close_fd()
        self._unsynced = []
        self._active = None
        self._w = NULL
        self._wcap = 0
        self._whard = 0
        self._wpos = 0
        self._idx = NULL
        self._tix = NULL
        self._segments = []
        self._lru = []                   # (views keep the mappings they need)
        self._nbases = 0
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1

    def _abandon(self):
        """Let go of the log as a killed process would: no sync, no clean mark; the lock and
        descriptors are released, the page cache keeps what was written. (A failed open ends
        this way; tests use it to simulate a crash.)"""
        if self._closed:
            return
        if self._inherited():
            self._let_go()
            return
        stop_flusher(self)
        self._closed = True
        self._wstate = 1
        self._teardown()

    cdef _let_go(self):
        """close() or GC of a fork child's copy of a Log its parent opened: release this
        process's descriptors (the lock's too: the parent's descriptor keeps the flock) and
        mappings, and nothing else. The flusher and pretoucher threads are the parent's (only
        their memory goes here), and no lock is taken: a thread of the parent may have held it
        at fork() time, and it does not exist here."""
        self._closed = True
        self._closing = True
        self._wstate = 1
        stop_flusher(self)
        self._teardown()

    # ---- reads and tools (bodies: lookup.pxi, segset.pxi, recovery.pxi)

    def _refresh(self):
        return refresh_segments(self)

    def read(self, offset):
        """The Record at `offset` (any integer, numpy's too; not a bool), CRC-checked; its value
        is a zero-copy view of the mapped segment.

        Raises OffsetOutOfRangeError (an IndexError) outside [start_offset, end_offset),
        CorruptLogError when the record is damaged on disk, TypeError for a non-integer,
        LogClosedError once closed."""
        return read_one(self, offset)

    def offset_for_time(self, timestamp):
        """The first offset whose record has timestamp >= `timestamp` (ns since the epoch), or
        end_offset when there is none. Timestamps may go backwards: each segment's time index
        holds the running maximum every 64 records, which is monotonic, so a binary search
        finds the 64-record window where the maximum first reaches `timestamp`; the record
        there is the first one at or after it."""
        return find_time(self, timestamp)

    def _index_problems(self):
        """[(index file, entries that disagree with the frames)] for segments whose .idx or
        .tix is missing, damaged or wrong. Reads every frame's length (not its CRC)."""
        return index_problems(self)

    def _rebuild_indexes(self):
        """Rewrite every sealed segment's index files from its frames (the active segment's
        index is the writer's own). For repairs."""
        return rebuild_indexes(self)

    def _salvage(self):
        """Yield every CRC-valid record of the log in offset order, skipping damage: after a bad
        frame, look for the next valid one at every 8-byte position (an operator's last resort,
        see `tidelog repair --salvage-to`). Offsets may then have gaps. Reads segments with a
        damaged header too, one at a time (each is unmapped when done, whatever its records'
        views keep alive)."""
        return salvage(self)

    def _segment_info(self):
        """[(base, path)] of the segments, for tools."""
        return segment_info(self)


