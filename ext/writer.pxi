# The log: opening (and recovery of the active segment), the writer (offsets, frames, rolls,
# index entries, sync) and segment lookup for readers. One object serves a writer or a reader.
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


cdef inline int64_t ctl_get(char* ctl, int field) noexcept nogil:
    return tl_load_i64_acquire(ctl + field)

cdef inline void ctl_set(char* ctl, int field, int64_t v) noexcept nogil:
    tl_store_i64_release(ctl + field, v)


cdef inline int wake_word(int field) noexcept nogil:
    return CTL_WAKE_DURABLE if field == CTL_DURABLE else CTL_WAKE_END


cdef void wake_sleepers(char* w) noexcept nogil:
    """Wake every reader sleeping on the wake word pair at `w` (in any process)."""
    tl_xchg_u32(w + 4, 0)
    tl_add_u32(w, 1)
    tl_futex_wake(w)


cdef enum:
    WAIT_SLICE_NS = 1000000000  # a sleeper looks at signals and close() at least this often

cdef int wait_ctl(char* ctl, int field, int64_t position, int64_t deadline, int64_t spin_ns,
                  bint rw) noexcept nogil:
    """Wait until the control page's `field` (end or durable offset) > position. 1: it is;
    0: `deadline` (monotonic ns; < 0: none) passed; 2: woken or a slice passed without it (the
    caller checks close(), signals and cancellation, then calls again).

    Spin for spin_ns first (the lowest latency when records come often), then sleep on the wake
    word: set the sleepers flag, read the wake sequence, and only then check the offset, so a
    publisher that stored the offset after our check sees the flag and bumps the sequence, which
    makes the futex wait return at once (docs/FORMAT.md §1). Without a writable control page
    (a read-only file), poll every millisecond."""
    cdef int64_t now = tl_mono_ns(), until, left
    cdef uint32_t seq = 0
    cdef int i
    cdef char* w = ctl + wake_word(field)
    until = now + spin_ns
    if deadline >= 0 and until > deadline:
        until = deadline
    while True:
        if tl_load_i64_acquire(ctl + field) > position:
            return 1
        if now >= until:
            break
        for i in range(64):
            tl_cpu_relax()
        now = tl_mono_ns()
    until = now + WAIT_SLICE_NS
    if deadline >= 0 and deadline < until:
        until = deadline
    while True:
        if rw:
            tl_store_u32_seqcst(w + 4, 1)
            seq = tl_load_u32_seqcst(w)
            if tl_load_u32_seqcst(w + 4) == 0:
                continue            # a publisher cleared it meanwhile: set it again
        if tl_load_i64_seqcst(ctl + field) > position:
            return 1
        now = tl_mono_ns()
        if now >= until:
            return 0 if deadline >= 0 and now >= deadline else 2
        left = until - now
        if rw:
            tl_futex_wait(w, seq, left)
            return 2
        tl_sleep_ns(left if left < 1000000 else 1000000)


cdef struct Item:
    const char* v
    size_t vlen
    const char* k
    int32_t klen
    int64_t ts


cdef class LogCore:
    cdef readonly str path
    cdef bint _readonly
    cdef bint _closed
    cdef int _wstate            # 0: appends allowed; else closed / read-only / failed
    cdef object _failure        # the LogFailedError that stopped the writer
    cdef int _mode
    cdef public int64_t _retain_bytes   # retention policies (-1: none), set before _open
    cdef public int64_t _retain_ns
    cdef int _waiting           # threads of this process in _wait_for
    cdef list _lru              # sealed segments this object mapped, latest last: reads, checks
                                # at open, retention and rolls all go through _touch, so at most
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
    cdef size_t _wcap
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
    cdef bint _rolling          # _roll is under way: the native flusher gets no file (_nf_update)
    cdef bint _busy
    cdef object _wlock
    cdef bint _syncing          # a leader is syncing (group commit, under _durable_cv)
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
    cdef int64_t _kick_at       # at this _written, an append calls _pressure ("batch" mode)
    cdef public int64_t _max_unsynced   # "batch" mode: appends wait this many bytes ahead of
                                        # the durable point (-1: never), set before _open
    cdef bint _unsafe_ack                       # tests' negative control only: never set it
    cdef tl_flusher* _nf        # "batch" mode: the native flusher thread (NULL otherwise)
    cdef tl_toucher* _tt        # the pretoucher thread (NULL: none, see _start_pretoucher)
    cdef readonly object _durable_cv            # notified whenever durable_offset advances
    cdef object _repair                         # None, or "truncate": cut at the first damage
    cdef readonly object repaired               # what a repair cut: (path, position, offset, why)
    cdef char* _stage           # staging buffer for runs written with pwrite
    cdef size_t _scap
    cdef public Py_ssize_t _pwrite_min   # runs of at least this many bytes go through pwrite

    def __cinit__(self):
        self._lru = []
        self._max_mapped = MAX_MAPPED_SEGMENTS
        self._retain_bytes = -1
        self._retain_ns = -1
        self._pwrite_min = PWRITE_MIN_BYTES
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
        if not os.path.exists(ctl_path):
            # a creation that crashed leaves only our lock and control .tmp: finish it
            others = [e for e in os.listdir(path) if e not in (LOCK_NAME, CONTROL_NAME + ".tmp")]
            if others:
                raise NotALogError(f"{path}: holds files that are not a tidelog log "
                                   f"(no {CONTROL_NAME}; found {sorted(others)[0]!r})")
            if readonly or not create:
                raise LogNotFoundError(_errno.ENOENT, "no tidelog log at this path", path)
            self._lock()
            if not os.path.exists(ctl_path):
                self._create_control(ctl_path)
        else:
            self._check_control(ctl_path)
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
                self._load_segments()
            else:
                self._open_writer()
        except BaseException:
            # a failed open leaves the files as they are: no sync, no clean mark
            self._closed = False
            self._abandon()
            raise
        self._closed = False
        self._wstate = 2 if readonly else 0
        if not readonly:
            self._start_flusher()
        if not readonly and self._mode == MODE_NONE:
            self._start_pretoucher()

    cdef _start_pretoucher(self):
        """A thread that faults in the pages ahead of the writer (ext/tl_toucher.h): single
        appends of 100 B went from ~210 to ~155 ns and of 1 KiB from ~0.6-1 us to ~0.54 us
        (bench/README.md). Only for durability="none", and only until the first sync() call:
        the pages it populates are dirty, so a sync writes the zeros ahead of the data, and its
        page_mkwrite calls hold journal handles that the sync's commit waits for. Measured in
        "batch" mode: appends 3.8 -> 5.0 M/s but the gap between durable points 13.5 -> 18.1 ms
        median (100 B) and 16.5 -> 52.7 ms (1 KiB) - the durability promise comes first. No
        thread (not Linux, no memory): the writer takes its own faults, as before."""
        self._tt = tl_toucher_start(&self._wpos, PRETOUCH_WINDOW, PRETOUCH_CHUNK, PRETOUCH_MIN_RATE)
        if self._tt != NULL and self._active is not None:
            tl_toucher_target(self._tt, self._w, self._wcap)

    cdef _stop_pretoucher(self):
        cdef tl_toucher* t = self._tt
        if t != NULL:
            self._tt = NULL
            with nogil:
                tl_toucher_free(t)          # waits for a chunk in progress

    def _pretouch_off(self):
        """Stop the pretoucher (bench/pretouch.py compares with and without it)."""
        self._stop_pretoucher()

    @property
    def _pretoucher(self):
        """(bytes populated, errno of a failed populate or 0) of the pretoucher, or None."""
        if self._tt == NULL:
            return None
        return (tl_toucher_populated(self._tt), tl_toucher_err(self._tt))

    cdef _start_flusher(self):
        """The writer's durability thread (ext/tl_flusher.h): in every mode it persists the
        durable checkpoint within CTL_PERSIST_SECONDS of a sync that moved it, also when the
        writer has gone quiet; in "batch" mode it makes the syncs, every sync_interval and
        early when the writer is max_unsynced / 2 bytes ahead of the durable point."""
        cdef bint batch = self._mode == MODE_BATCH
        cdef int64_t bound = self._max_unsynced if batch else -1
        self._nf = tl_flusher_new(&self._durable, &self._written, &self._durable_bytes,
                                  &self._wstate, self._ctl, CONTROL_SIZE, CTL_END, CTL_DURABLE,
                                  CTL_WAKE_DURABLE, batch, self._interval_ns,
                                  bound // 2 if bound > 0 else 0,
                                  <int64_t>(CTL_PERSIST_SECONDS * 1e9))
        if self._nf == NULL:
            raise MemoryError()
        self._kick_at = self._written + pressure_step(bound) if bound > 0 else INT64_MAX
        self._nf.unsafe_no_sync = self._unsafe_ack
        self._nf_update()
        rc = tl_flusher_start(self._nf)
        if rc:
            tl_flusher_free(self._nf)
            self._nf = NULL
            raise OSError(rc, f"cannot start the flusher thread: {os.strerror(rc)}")

    cdef _stop_flusher(self):
        cdef tl_flusher* f = self._nf
        if f != NULL:
            with nogil:
                tl_flusher_free(f)          # waits for a sync in progress
            self._nf = NULL

    cdef void _nf_update(self):
        """Hand the native flusher the active segment when it is the only file to sync."""
        if self._nf == NULL:
            return
        # not during a roll: it let other threads run (os calls) before the new segment shows
        # in _dir_dirty/_unsynced, and handing the old segment back then would let the flusher
        # acknowledge records of the new one with a sync of the old
        simple = (not self._rolling and self._active is not None and not self._dir_dirty and
                  len(self._unsynced) == 1 and self._unsynced[0] is self._active)
        tl_flusher_set_fd(self._nf, self._active.fd if simple else -1)

    cdef int _native_failed(self) except -1:
        """Raise LogFailedError if the native flusher's sync failed."""
        cdef int err
        if self._nf != NULL:
            err = tl_flusher_err(self._nf)
            if err:
                if self._failure is not None:
                    raise self._failure
                self._fail(err, self._active.path if self._active is not None else self.path)
        return 0

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

    cdef int _pressure(self) except -1:
        """"batch" mode: the writer has written another pressure_step bytes or reached the
        bound as last seen. If it is _max_unsynced bytes ahead of the durable point, wait (GIL released) until a sync brings
        it back under (the window a power loss can take stays bounded under any load, as
        Kafka's flush.messages or PostgreSQL's wal_writer_flush_after bound theirs); if it is
        half that far, have the flusher start a sync now. Called before anything is written:
        an append that raises here (closed, failed, a signal) left no record."""
        cdef Mapping m
        cdef int64_t at
        cdef int r
        while self._written - tl_load_i64_acquire(&self._durable_bytes) >= self._max_unsynced:
            if self._wstate:
                self._raise_state()
            if self._durable >= self._next:
                # every record is durable: the flusher counted its bytes before it read its
                # target, and a record that came in between is covered but not counted
                tl_store_i64_release(&self._durable_bytes, self._written)
                break
            if self._nf == NULL or not tl_flusher_active(self._nf):
                self._sync_to(self._next)          # after a roll Python's group commit syncs
                continue
            tl_flusher_kick(self._nf)
            m = self._ctl_map                      # stays mapped if close() runs meanwhile
            at = self._durable
            self._waiting += 1
            try:
                with nogil:
                    r = wait_ctl(m.addr, CTL_DURABLE, at, -1, 0, True)
            finally:
                self._waiting -= 1
            PyErr_CheckSignals()
        if self._wstate:
            self._raise_state()
        at = tl_load_i64_acquire(&self._durable_bytes)
        if self._nf != NULL and self._written - at >= self._max_unsynced // 2:
            tl_flusher_kick(self._nf)
        # look again after another step, and at the latest where the bound is (a sync that
        # ends meanwhile only moves that further)
        self._kick_at = min(self._written + pressure_step(self._max_unsynced),
                            at + self._max_unsynced)
        return 0

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

    cdef _create_control(self, str ctl_path):
        h = bytearray(CONTROL_SIZE)
        h[0:8] = CONTROL_MAGIC
        h[8:12] = (<uint32_t>FORMAT_VERSION).to_bytes(4, "little")
        h[CTL_SEGMENT_BYTES:CTL_SEGMENT_BYTES + 8] = self._seg_bytes.to_bytes(8, "little")
        tmp = ctl_path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, bytes(h))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, ctl_path)
        dfd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    cdef _check_control(self, str ctl_path):
        with open(ctl_path, "rb") as f:
            h = f.read(CONTROL_SIZE)
        if len(h) < CONTROL_SIZE or h[0:8] != CONTROL_MAGIC:
            raise NotALogError(f"{ctl_path}: not a tidelog control file (bad magic or size); "
                               f"this directory does not hold a tidelog log")
        version = int.from_bytes(h[8:12], "little")
        if version > FORMAT_VERSION:
            raise FormatVersionError(f"{self.path}: log format version {version}; this tidelog "
                                     f"reads up to version {FORMAT_VERSION}: upgrade tidelog")

    cdef list _list_bases(self, bint cleanup):
        bases = []
        for name in os.listdir(self.path):
            m = SEGMENT_RE.match(name)
            if m:
                bases.append(int(m.group(1)))
            elif cleanup and name.endswith(".seg.tmp"):
                os.unlink(os.path.join(self.path, name))

        bases.sort()
        return bases

    cdef Segment _new_segment_obj(self, int64_t base, bint writable):
        cdef Segment s = Segment.__new__(Segment)
        s.base = base
        s.path = os.path.join(self.path, segment_name(base))
        s.writable = writable
        return s

    cdef _push_base(self, int64_t base):
        if self._nbases == self._bases_cap:
            newcap = max(16, self._bases_cap * 2)
            p = <int64_t*>realloc_bases(self._bases, newcap)
            self._bases = p
            self._bases_cap = newcap
        self._bases[self._nbases] = base
        self._nbases += 1

    cdef _load_segments(self):
        """(Re)build the segment list from the directory; keeps Segment objects already known.
        The list and the bases array are built aside and swapped with no Python call between,
        so another thread of this process never sees them disagree."""
        cdef int64_t* bases_c
        cdef Py_ssize_t n
        known = {s.base: s for s in self._segments}
        bases = self._list_bases(False)
        segs = []
        for b in bases:
            s = known.get(b)
            if s is not None and self._readonly and (<Segment>s).ino is not None:
                try:        # a repair or recovery may have made a new file of the same base
                    if os.stat((<Segment>s).path).st_ino != (<Segment>s).ino:
                        s = None
                except FileNotFoundError:
                    s = None
            if s is None:
                s = self._new_segment_obj(b, False)
            segs.append(s)
        for i in range(len(segs) - 1):
            (<Segment>segs[i]).next_base = (<Segment>segs[i + 1]).base
        if segs:
            (<Segment>segs[len(segs) - 1]).next_base = -1
        n = len(segs)
        gen = ctl_get(self._ctl, CTL_GENERATION) if self._ctl != NULL else 0
        if (self._nbases and gen == self._gen and
                (n == 0 or (<Segment>segs[n - 1]).base < self._bases[self._nbases - 1])):
            return          # another thread swapped in a newer listing meanwhile: keep it (a
                            # new writer generation may legitimately have fewer segments)
        bases_c = <int64_t*>malloc(max(n, 16) * sizeof(int64_t))
        if bases_c == NULL:
            raise MemoryError()
        for i in range(n):
            bases_c[i] = (<Segment>segs[i]).base
        free(self._bases)
        self._gen = gen                 # a new writer generation may have replaced files
        self._bases = bases_c
        self._bases_cap = max(n, 16)
        self._nbases = n
        self._segments = segs

    cdef _check_header(self, Segment s):
        try:
            with open(s.path, "rb") as f:
                h = f.read(SEGMENT_HEADER_SIZE)
        except FileNotFoundError:
            raise CorruptLogError(f"{s.path}: segment vanished while opening", path=s.path,
                                  position=0, offset=s.base) from None
        check_segment_header(h, s.base, s.path)

    cdef _open_writer(self):
        cdef char* ctl = self._ctl
        cdef bint clean = (rd_u32(ctl + CTL_FLAGS) & CTL_FLAG_CLEAN) != 0
        cdef int64_t c_end = ctl_get(ctl, CTL_END), c_durable = ctl_get(ctl, CTL_DURABLE)
        cdef int64_t c_start = ctl_get(ctl, CTL_START)
        cdef Segment act
        self._list_bases(True)
        self._load_segments()
        k = 0
        bases = [(<Segment>x).base for x in self._segments]
        if c_start in bases and c_start <= c_durable <= c_end:      # (a plausible checkpoint)
            k = bases.index(c_start)
        if k:       # a retention stopped midway: its new start is persisted, delete the rest
            unlink_segment_files(self._segments[:k])
            os.fsync(self._dir_fd)
            self._segments = []
            self._nbases = 0
            self._load_segments()
        self._check_headers(clean and self._repair is None,
                            -1 if self._repair is not None else c_durable)
        if not self._segments:
            if c_end != c_start and (clean or c_durable > c_start):
                raise CorruptLogError(f"{self.path}: every segment is missing but the control "
                                      f"file records offsets {c_start}..{c_end}",
                                      path=self.path, position=None, offset=c_start)
            seg = self._create_segment(c_start, self._seg_bytes)
            self._segments.append(seg)
            self._push_base(c_start)
            self._start = c_start
            self._next = c_start
            self._set_active(seg, SEGMENT_HEADER_SIZE)
            self._resume_index(seg, SEGMENT_HEADER_SIZE, c_start, True)
            self._sync_after_recovery(0)
        else:
            self._start = (<Segment>self._segments[0]).base
            if c_start < self._start and c_end > c_start:
                raise CorruptLogError(
                    f"{self.path}: the log starts at offset {c_start} but its first segment "
                    f"starts at {self._start}: segments are missing", path=self.path,
                    position=None, offset=c_start)
            act = self._segments[len(self._segments) - 1]
            pos = None
            if (clean and ctl_get(ctl, CTL_ACTIVE_BASE) == act.base and self._repair is None
                    and c_durable == c_end):
                self._check_chain(len(self._segments) - 1)
                act.writable = True
                act.ensure()
                pos = self._clean_tail(act, c_end, ctl_get(ctl, CTL_ACTIVE_POS))
            if pos is not None:
                self._next = c_end
                self._set_active(act, pos)
                self._resume_index(act, pos, c_end, act.index_fresh)
            else:
                first = self._recover(c_durable)
                self._sync_after_recovery(first)
        self._durable = self._next
        ctl_set(ctl, CTL_START, self._start)
        ctl_set(ctl, CTL_END, self._next)
        ctl_set(ctl, CTL_DURABLE, self._next)
        ctl_set(ctl, CTL_ACTIVE_BASE, self._base)
        ctl_set(ctl, CTL_SEGMENT_BYTES, self._seg_bytes)
        ctl_set(ctl, CTL_GENERATION, ctl_get(ctl, CTL_GENERATION) + 1)
        wr_u32(ctl + CTL_FLAGS, rd_u32(ctl + CTL_FLAGS) & ~(<uint32_t>CTL_FLAG_CLEAN))
        if msync(ctl, CONTROL_SIZE, MS_SYNC) != 0:
            raise_oserror(errno, os.path.join(self.path, CONTROL_NAME))

    cdef _check_headers(self, bint clean, int64_t durable):
        """Every segment header must be valid, except after an unclean stop: a segment whose
        header never reached the disk was never synced, so neither it nor any later segment
        holds an acknowledged record (a sync covering a later one would have synced it too);
        those are deleted. One below the durable offset is corruption."""
        cdef Segment s
        for i in range(len(self._segments)):
            s = self._segments[i]
            try:
                self._check_header(s)
            except FormatVersionError:
                raise
            except CorruptLogError:
                if clean or s.base < durable or i == 0:
                    raise
                if self._repair is not None:
                    self.repaired = (s.path, 0, s.base, "segment header damaged")
                self._drop_segments(i)
                return

    cdef _drop_segments(self, Py_ssize_t i):
        """Delete segments i.. (a torn tail after an unclean stop) and their indexes."""
        for seg in self._segments[i:]:
            (<Segment>seg).close_fd()
            stem = (<Segment>seg).path[:len((<Segment>seg).path) - 4]
            for ext in (".seg", ".idx", ".tix"):
                try:
                    os.unlink(stem + ext)
                except FileNotFoundError:
                    pass
        del self._segments[i:]
        self._nbases = i
        if i:
            (<Segment>self._segments[i - 1]).next_base = -1
        self._dir_dirty = True

    cdef _check_chain(self, Py_ssize_t upto):
        """Segments [0, upto) must each end with the record just before the next segment's
        base: a gap (a missing or cut segment) is corruption. O(1) per segment (index)."""
        cdef Segment s
        cdef int64_t at, last
        cdef Py_ssize_t p
        cdef uint32_t length
        cdef int rc
        for i in range(upto):
            s = self._segments[i]
            last = s.next_base - 1
            if last < s.base:
                raise CorruptLogError(f"{s.path}: segment holds no record before the next "
                                      f"segment {s.next_base}", path=s.path, position=None,
                                      offset=s.base)
            self._touch(s)
            p = s.find_checked(last, &length, &rc)
            at = last
            if rc != FRAME_OK:
                raise CorruptLogError(
                    f"{s.path}: segment does not end at offset {last} where segment "
                    f"{s.next_base} begins (gap or damage at byte {p}); run `tidelog verify "
                    f"{self.path}`", path=s.path, position=p, offset=at)

    cdef object _clean_tail(self, Segment s, int64_t end, int64_t pos):
        """After a clean close: check in O(1) that `end` and `pos` describe the segment's end.
        Returns pos, or None when they do not (then the segment is scanned)."""
        cdef int64_t at
        cdef uint32_t length
        cdef Py_ssize_t p
        if end < s.base or pos < SEGMENT_HEADER_SIZE or pos > <int64_t>s.cap or (pos & 7):
            return None
        if pos + FRAME_HEADER_SIZE <= <int64_t>s.cap and rd_u32(s.data + pos) != 0:
            return None
        if end == s.base:
            return pos if pos == SEGMENT_HEADER_SIZE else None
        p = s.find(end - 1, &at)
        if at != end - 1 or frame_check(s.data, s.cap, p, end - 1, &length) != FRAME_OK:
            return None
        if p + <int64_t>align8(length) != pos:
            return None
        return pos

    cdef Py_ssize_t _recover(self, int64_t durable) except -1:
        """After an unclean stop: from the start of the segment holding the durable offset in the
        control page (the checkpoint of the last successful sync), follow the frames (FORMAT.md
        rules 1-6) across segments; keep the longest valid prefix, delete the segments after its
        end, zero the rest of its last segment and rebuild that segment's index. Anything
        invalid below the durable offset is corruption. Returns the index of the first segment
        scanned (everything from there on is synced before the log is used)."""
        cdef Py_ssize_t i, first
        cdef Segment s, nxt
        cdef size_t pos
        cdef int64_t off
        cdef object bad = None
        segs = self._segments
        # the segment holding the durable offset (the scan starts there); a repair reads all
        first = 0
        for i in range(len(segs)):
            if (<Segment>segs[i]).base <= durable and self._repair is None:
                first = i
        self._check_chain(first)
        s = segs[first]
        s.ensure()                      # read-only while scanning: only the last one is written
        # from the start of that segment, not from the record at the checkpoint: batch rules
        # need a batch's first frame, and the checkpoint is only as good as the control page
        # that holds it (at most one segment is scanned more)
        pos = SEGMENT_HEADER_SIZE
        off = s.base
        i = first
        while True:
            nxt = segs[i + 1] if i + 1 < len(segs) else None
            pos, off, bad = self._scan_frames(s, pos, off, nxt.base if nxt is not None else -1)
            if bad is not None or nxt is None:
                break
            if off != nxt.base:
                # this segment's data ends before the next one begins: its tail was lost
                bad = (s.path, pos, off, FRAME_END)
                break
            i += 1
            self._touch(s)              # sealed: scanned (a repair scans them all)
            s = nxt
            s.ensure()
            pos = SEGMENT_HEADER_SIZE
        if self._repair is not None:
            if bad is not None or i + 1 < len(segs) or off < durable:
                self.repaired = (bad or (s.path, pos, off, FRAME_END))[:3] + (
                    FRAME_PROBLEMS.get((bad or (0, 0, 0, FRAME_END))[3]),)
        elif off < durable:
            if bad is None:
                bad = (s.path, pos, off, FRAME_END)
            raise corrupt(bad[0], bad[1], bad[2], bad[3])
        if i + 1 < len(segs):
            self._drop_segments(i + 1)
        s.writable = True
        s.ensure()                      # mapped again writable, with a descriptor kept
        zero_tail(s, pos)
        self._next = off
        self._set_active(s, pos)
        self._resume_index(s, pos, off, True)
        return first

    cdef tuple _scan_frames(self, Segment s, size_t pos, int64_t off, int64_t limit):
        """Follow valid frames from pos (offset off) up to offset `limit` (the next segment's
        base; -1: none; what a sealed segment holds after it is ignored); a batch counts only
        whole. Returns
        (position, offset) where the valid data ends and None, or the damage found there as
        (path, position, offset, problem) when it is not a clean end."""
        cdef size_t bpos
        cdef int64_t boff
        cdef uint32_t length, n, k
        cdef int rc
        while True:
            if off == limit:
                return pos, off, None
            rc = frame_check(s.data, s.cap, pos, off, &length)
            if rc == FRAME_END:
                return pos, off, None
            if rc != FRAME_OK:
                return pos, off, (s.path, pos, off, rc)
            n = rd_u32(s.data + pos + 28)
            if n == 0:
                return pos, off, (s.path, pos, off, FRAME_BAD_LENGTH)   # follower without head
            bpos = pos + align8(length)
            boff = off + 1
            k = 1
            while k < n:
                rc = frame_check(s.data, s.cap, bpos, boff, &length)
                if rc != FRAME_OK or rd_u32(s.data + bpos + 28) != 0:
                    return pos, off, (s.path, bpos, boff, rc if rc != FRAME_OK else FRAME_BAD_LENGTH)
                bpos += align8(length)
                boff += 1
                k += 1
            pos = bpos
            off = boff

    cdef _sync_after_recovery(self, Py_ssize_t first):
        """Recovery keeps records that may not have been synced: sync them (and the directory)
        before anything is acknowledged on top of them."""
        cdef Segment seg
        for j in range(first, len(self._segments)):
            seg = self._segments[j]
            if seg.fd < 0:
                seg.fd = os.open(seg.path, os.O_RDWR | os.O_CLOEXEC)
            if tl_datasync(seg.fd) != 0:
                raise_oserror(errno, seg.path)
            if seg is not self._active:
                seg.close_fd()
        os.fsync(self._dir_fd)
        self._dir_dirty = False

    cdef _resume_index(self, Segment s, size_t end_pos, int64_t end, bint rebuild):
        """Make segment s (data ending at end_pos, offset end) the writer's index target:
        check that its index describes exactly the data, else rebuild it from the frames."""
        cdef size_t pos
        cdef uint32_t length
        cdef int64_t off, last, at, j, m
        self._max_ts = -(1 << 62)
        if s.idx == NULL:
            return
        last = end - 1 - s.base                      # relative offset of the last record
        if not rebuild:
            if last < 0:
                rebuild = tl_load_u32_acquire(s.idx) != 0
            else:
                rebuild = (s.idx_get(<size_t>(last // <int64_t>s.idx_stride)) == 0 or
                           (<size_t>(last // <int64_t>s.idx_stride) + 1 < s.idx_slots and
                            tl_load_u32_acquire(s.idx + (last // <int64_t>s.idx_stride + 1) * 4)
                            != 0))
            if not rebuild and last >= 0:
                # running max timestamp: the last .tix entry, then the records after it. The
                # entry seeds the entries to come, so it must look right: not 0 (not written),
                # not below the one before it or its own record's timestamp, none after it
                j = last // TIX_STRIDE
                off = s.base + j * TIX_STRIDE
                m = rd_i64(s.tix + j * 8)
                pos = s.find(off, &at)
                rebuild = (at != off or frame_shape(s.data, s.cap, pos, off, &length) != FRAME_OK
                           or m == 0 or m < rd_i64(s.data + pos + 16)
                           or (j > 0 and m < rd_i64(s.tix + (j - 1) * 8))
                           or (<size_t>j + 1 < s.tix_slots and rd_i64(s.tix + (j + 1) * 8) != 0))
            if not rebuild and last >= 0:
                self._max_ts = m
                while pos < end_pos and at < end:
                    length = rd_u32(s.data + pos)
                    if length == 0:
                        break
                    self._max_ts = max(self._max_ts, rd_i64(s.data + pos + 16))
                    pos += align8(length)
                    at += 1
                return
        memset(s.idx, 0, s.idx_slots * 4)
        memset(s.tix, 0, s.tix_slots * 8)
        pos = SEGMENT_HEADER_SIZE
        off = s.base
        self._idx = s.idx
        self._idx_stride = s.idx_stride
        self._tix = s.tix
        self._base = s.base
        while pos < end_pos:
            length = rd_u32(s.data + pos)
            if length == 0:
                break
            self._index_note(pos, off, rd_i64(s.data + pos + 16))
            pos += align8(length)
            off += 1
        s.index_fresh = False

    cdef _set_active(self, Segment s, size_t pos):
        self._active = s
        self._w = s.data
        self._wcap = s.cap
        self._wpos = pos
        self._base = s.base
        prealloc_activate(self, s, pos)     # prealloc.pxi: sets _wcap (the index may be dropped)
        self._idx = s.idx
        self._idx_stride = s.idx_stride
        self._tix = s.tix
        if self._tt != NULL:
            tl_toucher_target(self._tt, self._w, self._wcap)
        if s not in self._unsynced:
            self._unsynced.append(s)

    cdef Segment _create_segment(self, int64_t base, int64_t capacity):
        """A new segment: written under a .tmp name, preallocated, header, then renamed."""
        cdef Segment s = self._new_segment_obj(base, True)
        s.newest_ts = -(1 << 62)        # empty: this writer's running max will cover it all
        for ext in (".idx", ".tix"):             # left over from a segment of the same base
            try:
                os.unlink(s.path[:len(s.path) - 4] + ext)
            except FileNotFoundError:
                pass
        tmp = s.path + ".tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            rc = prealloc_new_file(fd, capacity)        # prealloc.pxi: the first step
            if rc:
                raise_oserror(rc, tmp)
            os.pwrite(fd, segment_header(base, capacity, tl_now_ns()), 0)
            os.rename(tmp, s.path)
        except BaseException:
            os.close(fd)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        self._dir_dirty = True
        try:
            s.attach(fd)
        except BaseException:
            # nothing may be left that claims offsets the writer keeps appending elsewhere
            s.close_fd()
            for ext in (".seg", ".idx", ".tix"):
                try:
                    os.unlink(s.path[:len(s.path) - 4] + ext)
                except OSError:
                    pass
            os.fsync(self._dir_fd)
            raise
        return s

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
            self._native_failed()
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
        cdef Mapping m = self._ctl_map       # keeps the page mapped if close() runs meanwhile
        cdef char* ctl
        cdef int field = CTL_DURABLE if durable else CTL_END
        cdef int64_t deadline = -1, spin_ns = <int64_t>(spin * 1e9)
        cdef bint rw = self._ctl_rw
        cdef int r
        self._check_open()
        if timeout is not None:
            deadline = tl_mono_ns() + <int64_t>(max(0.0, <double>timeout) * 1e9)
        ctl = m.addr
        self._waiting += 1
        try:
            while True:
                with nogil:
                    r = wait_ctl(ctl, field, position, deadline, spin_ns, rw)
                if r == 1:
                    return True
                if r == 0:
                    return False
                if tl_load_i64_seqcst(ctl + field) > position:
                    return True             # (close() syncs, then wakes: the last word counts)
                self._check_open()
                if durable and not self._readonly:
                    if self._failure is not None:
                        raise LogFailedError(str(self._failure)) from self._failure
                    self._native_failed()
                if cancel is not None and cancel.is_set():
                    return False
                PyErr_CheckSignals()
                spin_ns = 0
        finally:
            self._waiting -= 1

    def _wake_sleepers(self):
        """Wake every sleeper on this log (they check their conditions again)."""
        if self._ctl != NULL and self._ctl_rw:
            tl_add_u32(self._ctl + CTL_WAKE_END, 1)
            tl_futex_wake(self._ctl + CTL_WAKE_END)
            tl_add_u32(self._ctl + CTL_WAKE_DURABLE, 1)
            tl_futex_wake(self._ctl + CTL_WAKE_DURABLE)

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
        """First offset still in the log."""
        self._check_open()
        return self._start_now()

    @property
    def end_offset(self):
        """The offset the next append gets."""
        self._check_open()
        return self._end_now()

    @property
    def durable_offset(self):
        """Every record below this offset is on stable storage."""
        self._check_open()
        return self._durable_now()

    @property
    def closed(self):
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
        return self._readonly

    @property
    def segment_bytes(self):
        return self._seg_bytes

    @property
    def durability(self):
        return ("none", "batch", "always")[self._mode]

    def __len__(self):
        self._check_open()
        return self._end_now() - self._start_now()

    # ---------------------------------------------------------------- appending

    cdef inline void _index_note(self, size_t pos, int64_t off, int64_t ts) noexcept nogil:
        cdef uint64_t rel = <uint64_t>(off - self._base)
        if ts > self._max_ts:
            self._max_ts = ts
        if (rel & (self._idx_stride - 1)) == 0 and self._idx != NULL:
            tl_store_u32_release(self._idx + (rel // self._idx_stride) * 4, <uint32_t>pos)
            if (rel & (TIX_STRIDE - 1)) == 0:
                wr_i64(self._tix + (rel // TIX_STRIDE) * 8, self._max_ts)

    cdef int _locked_roll(self, size_t need) except -1:
        """_roll for a single append: rolling calls the OS, which lets other threads run, so
        they are held off (they wait in _wait_idle) until the new segment is in place."""
        self._lock_writer()
        try:
            self._check_write()
            if need > self._wcap - self._wpos:      # another thread may have rolled meanwhile
                self._roll(need)
        finally:
            self._unlock_writer()
        return 0

    cdef int _roll(self, size_t need) except -1:
        """Roll to a new segment so that `need` bytes of frames fit (writer lock held). The
        native flusher has no file from here until a Python sync has synced both and the
        directory (_nf_update)."""
        if grow_active(self, need):     # prealloc.pxi: room by allocating a step further
            return 0
        self._rolling = True
        try:
            if self._nf != NULL:
                tl_flusher_set_fd(self._nf, -1)  # two files to sync now: Python's sync does it
            self._roll_to(need)
            return fit_after_roll(self, need)   # prealloc.pxi: the new file is one step long
        finally:
            self._rolling = False

    cdef int _roll_to(self, size_t need) except -1:
        cdef Segment seg
        if need > <size_t>(self._seg_bytes - SEGMENT_HEADER_SIZE):
            raise ValueError(f"{need} bytes of frames do not fit in a segment of segment_bytes="
                             f"{self._seg_bytes} (open the log with a larger segment_bytes)")
        cdef Segment old = self._active
        if self._wpos == SEGMENT_HEADER_SIZE:
            if self._wcap < <size_t>self._seg_bytes:
                # an empty active segment made with a smaller segment_bytes (an earlier open):
                # replace it by one of today's size (nothing in it to lose; readers notice the
                # new file by its inode)
                seg = self._create_segment(old.base, self._seg_bytes)
                self._segments[len(self._segments) - 1] = seg
                with self._durable_cv:
                    if old in self._unsynced:       # a syncing leader keeps its reference
                        self._unsynced.remove(old)
                self._set_active(seg, SEGMENT_HEADER_SIZE)
                self._max_ts = -(1 << 62)
                return 0
            raise ValueError(f"{need} bytes of frames do not fit in the current segment of "
                             f"{self._wcap} bytes")
        seg = self._create_segment(self._next, self._seg_bytes)
        old.next_base = seg.base
        if old.newest_ts != TS_UNKNOWN:
            old.newest_ts = self._max_ts    # filled from empty here: the running max is exact
        self._segments.append(seg)
        self._push_base(seg.base)
        self._set_active(seg, SEGMENT_HEADER_SIZE)
        old.writable = False        # sealed: mapped again read-only, its fd kept only until a sync
        self._touch(old)
        self._max_ts = -(1 << 62)
        ctl_set(self._ctl, CTL_ACTIVE_BASE, seg.base)
        if self._retain_bytes >= 0 or self._retain_ns >= 0:
            try:
                self._retain()
            except OSError as e:     # the append itself succeeded: report, do not fail it
                warnings.warn(f"{self.path}: retention failed: {e}", RuntimeWarning)
        return 0

    # ---------------------------------------------------------------- retention

    def truncate_before(self, offset):
        """Delete the whole segments that lie entirely below `offset` (never the active one);
        returns the new start_offset. Readers that still map a deleted segment keep their views
        (the file is unlinked, not unmapped); a read below start_offset gets
        OffsetOutOfRangeError."""
        cdef int64_t off, end
        cdef Py_ssize_t k = 0
        off = _args.offset(offset)
        self._check_entry()
        end = self._next
        if off > end:
            raise ValueError(f"offset: {off} is beyond end_offset {end}")
        self._lock_writer()
        try:
            self._check_write()
            while (k + 1 < len(self._segments) and
                   (<Segment>self._segments[k + 1]).base <= off):
                k += 1
            self._drop_front(k)
        finally:
            self._unlock_writer()
        return self._start

    def _apply_retention(self):
        """Apply retain_bytes / retain_seconds now (the writer also does at every roll)."""
        self._check_entry()
        self._lock_writer()
        try:
            self._check_write()
            self._retain()
        finally:
            self._unlock_writer()

    cdef _retain(self):
        """Delete the oldest sealed segments while the log holds more than retain_bytes (files
        are preallocated: a segment counts its capacity) or their newest record is older than
        retain_seconds."""
        cdef Py_ssize_t k = 0, n = len(self._segments)
        cdef Segment seg
        cdef int64_t cutoff
        if self._retain_bytes >= 0:
            sizes = []
            for seg in self._segments:
                try:
                    sizes.append(os.stat(seg.path).st_size)
                except FileNotFoundError:
                    sizes.append(0)
            total = sum(sizes)
            while k < n - 1 and total > self._retain_bytes:
                total -= sizes[k]
                k += 1
        if self._retain_ns >= 0:
            cutoff = tl_now_ns() - self._retain_ns
            while k < n - 1:
                seg = self._segments[k]
                self._touch(seg)
                if seg_holds_newer(seg, (<Segment>self._segments[k + 1]).base, cutoff):
                    break
                k += 1
        self._drop_front(k)

    cdef _drop_front(self, Py_ssize_t k):
        """Delete the k oldest segments (sealed ones). The new start_offset is persisted in the
        control page first: a crash midway leaves only files below it, which the next open
        deletes. The list and bases array are swapped with no Python call between (other
        threads read them)."""
        cdef int64_t* bases_c
        cdef Py_ssize_t n, i
        cdef int64_t new_start
        if k <= 0:
            return
        if k >= len(self._segments):
            raise AssertionError("retention never deletes the active segment")
        dropped = self._segments[:k]
        keep = self._segments[k:]
        n = len(keep)
        new_start = (<Segment>keep[0]).base
        ctl_set(self._ctl, CTL_START, new_start)
        if msync(self._ctl, CONTROL_SIZE, MS_SYNC) != 0:
            raise_oserror(errno, os.path.join(self.path, CONTROL_NAME))
        bases_c = <int64_t*>malloc(max(n, 16) * sizeof(int64_t))
        if bases_c == NULL:
            raise MemoryError()
        for i in range(n):
            bases_c[i] = (<Segment>keep[i]).base
        old = <size_t>self._bases
        self._bases = bases_c
        self._bases_cap = max(n, 16)
        self._nbases = n
        self._segments = keep
        self._start = new_start
        free(<int64_t*>old)
        with self._durable_cv:
            for seg in dropped:
                if seg in self._unsynced:       # a syncing leader keeps its own reference
                    self._unsynced.remove(seg)
        self._lru = [x for x in self._lru if x not in dropped]
        unlink_segment_files(dropped)
        os.fsync(self._dir_fd)

    cdef int64_t _append1(self, const char* v, size_t vlen, const char* k, int32_t klen,
                          int64_t ts) except -1:
        cdef size_t need = align8(FRAME_HEADER_SIZE + key_area(klen) + vlen)
        cdef int64_t off
        if self._written >= self._kick_at:
            self._pressure()
        if self._busy:
            self._wait_idle()
        else:
            self._check_write()     # the caller's argument handling may have let close() run
        if need > self._wcap - self._wpos:
            self._locked_roll(need)
            self._check_write()     # a close() deferred during the roll ran as it ended
        off = self._next
        frame_write(self._w + self._wpos, off, ts, k, klen, v, vlen, 1, True)
        self._index_note(self._wpos, off, ts)
        self._wpos += need
        self._written += need
        if self._tt != NULL:
            tl_toucher_kick(self._tt, self._wpos)
        self._next = off + 1
        self._publish(CTL_END, off + 1)
        return off

    def append(self, value, *, key=None, timestamp=None):
        """Append one record; returns its offset."""
        # (close() sets _closing and then _wstate: an append that passed the check below holds
        # the GIL until its record is published, which close() waits for)
        cdef Py_buffer vb, kb
        cdef const char* vp
        cdef const char* kp = NULL
        cdef Py_ssize_t vlen, klen = -1
        cdef bint vrel = False, krel = False
        cdef int64_t ts, off, now
        cdef Item item
        self._check_entry()
        if PyBytes_Check(value):
            vp = PyBytes_AS_STRING(value)
            vlen = PyBytes_GET_SIZE(value)
        else:
            value = get_buffer(value, &vb, "value")
            if value is None:
                vrel = True
                vp = <const char*>vb.buf
                vlen = vb.len
            else:
                vp = PyBytes_AS_STRING(value)
                vlen = PyBytes_GET_SIZE(value)
        try:
            if key is not None:
                if PyBytes_Check(key):
                    kp = PyBytes_AS_STRING(key)
                    klen = PyBytes_GET_SIZE(key)
                else:
                    key = get_buffer(key, &kb, "key")
                    if key is None:
                        krel = True
                        kp = <const char*>kb.buf
                        klen = kb.len
                    else:
                        kp = PyBytes_AS_STRING(key)
                        klen = PyBytes_GET_SIZE(key)
                if klen >= 0x7FFFFFFF:
                    raise ValueError("key: longer than 2 GiB")
            now = tl_now_ns()
            ts = now if timestamp is None else to_timestamp(timestamp, "timestamp")
            if <size_t>vlen > <size_t>(0xFFFFFFFF - 4096) - <size_t>(klen if klen > 0 else 0):
                raise ValueError(f"value: {vlen} bytes is larger than a record can be")
            if vlen >= self._pwrite_min:
                # a large record: staged and written with pwrite like a batch (a store through
                # the mapping would first make the kernel zero each fresh page)
                item.v = vp
                item.vlen = <size_t>vlen
                item.k = kp
                item.klen = <int32_t>klen
                item.ts = ts
                off = self._write_items(&item, 1, True)
            else:
                off = self._append1(vp, <size_t>vlen, kp, <int32_t>klen, ts)
        finally:
            if vrel:
                PyBuffer_Release(&vb)
            if krel:
                PyBuffer_Release(&kb)
        if self._mode == MODE_ALWAYS:
            self._sync_to(off + 1)
        elif (self._mode == MODE_BATCH and now - self._last_sync_ns >= self._interval_ns and
                (self._nf == NULL or not tl_flusher_active(self._nf))):
            self._batch_due(off + 1)
        return off

    def append_batch(self, values, *, keys=None, timestamps=None, bint atomic=True):
        """Append many records in one call; returns the first offset (end_offset if empty)."""
        cdef Item* items = NULL
        cdef Py_buffer* bufs = NULL
        cdef Py_buffer abuf
        cdef bint arel = False
        cdef Py_ssize_t n = 0, i, nbufs = 0, bufcap = 0, row = 0
        cdef int64_t first, now
        cdef const int64_t[::1] tsv
        cdef char* base
        cdef PyObject** objs
        cdef list keep = []
        self._check_entry()
        if isinstance(values, np.ndarray):
            arr = values
            if arr.ndim == 0:
                raise TypeError("values: a 0-d array is one value; pass a 1-D or 2-D array")
            if arr.dtype.hasobject:
                raise TypeError("values: an array of Python objects is not bytes-like")
            arr = np.ascontiguousarray(arr)
            n = arr.shape[0]
            row = (arr.nbytes // n) if n else 0
            PyObject_GetBuffer(arr.reshape(-1).view(np.uint8) if arr.nbytes else b"", &abuf, PyBUF_SIMPLE)
            arel = True
        else:
            if isinstance(values, (bytes, bytearray, memoryview, str)):
                raise TypeError(f"values: expected an iterable of bytes-like objects or a numpy "
                                f"array, not a single {type(values).__name__}")
            try:
                seq = values if type(values) is list or type(values) is tuple else list(values)
            except TypeError:
                raise TypeError(f"values: expected an iterable of bytes-like objects or a numpy "
                                f"array, not {type(values).__name__}") from None
            n = len(seq)
        try:
            items = <Item*>malloc(max(n, 1) * sizeof(Item))
            if items == NULL:
                raise MemoryError()
            if arel:
                base = <char*>abuf.buf
                for i in range(n):
                    items[i].v = base + i * row
                    items[i].vlen = <size_t>row
                    items[i].klen = -1
            else:
                objs = PySequence_Fast_ITEMS(seq)      # borrowed: seq holds them
                for i in range(n):
                    items[i].klen = -1
                    if PyBytes_CheckExact_p(objs[i]):
                        items[i].v = PyBytes_AS_STRING_p(objs[i])
                        items[i].vlen = <size_t>PyBytes_GET_SIZE_p(objs[i])
                    else:
                        item = <object>objs[i]
                        if nbufs == bufcap:
                            bufs = grow_bufs(bufs, &bufcap)
                        copy = get_buffer(item, &bufs[nbufs], f"values[{i}]")
                        if copy is None:
                            items[i].v = <const char*>bufs[nbufs].buf
                            items[i].vlen = <size_t>bufs[nbufs].len
                            nbufs += 1
                        else:
                            keep.append(copy)
                            items[i].v = PyBytes_AS_STRING(copy)
                            items[i].vlen = PyBytes_GET_SIZE(copy)
            if keys is not None:
                if isinstance(keys, (bytes, bytearray, memoryview, str)):
                    raise TypeError("keys: expected a sequence of keys (bytes-like or None), one per value")
                kseq = keys if isinstance(keys, (list, tuple)) else list(keys)
                if len(kseq) != n:
                    raise ValueError(f"keys: {len(kseq)} keys for {n} values")
                for i in range(n):
                    item = kseq[i]
                    if item is None:
                        continue
                    if PyBytes_Check(item):
                        items[i].k = PyBytes_AS_STRING(item)
                        items[i].klen = <int32_t>min(PyBytes_GET_SIZE(item), 0x7FFFFFFF)
                    else:
                        if nbufs == bufcap:
                            bufs = grow_bufs(bufs, &bufcap)
                        copy = get_buffer(item, &bufs[nbufs], f"keys[{i}]")
                        if copy is None:
                            items[i].k = <const char*>bufs[nbufs].buf
                            items[i].klen = <int32_t>min(bufs[nbufs].len, 0x7FFFFFFF)
                            nbufs += 1
                        else:
                            keep.append(copy)
                            items[i].k = PyBytes_AS_STRING(copy)
                            items[i].klen = <int32_t>min(PyBytes_GET_SIZE(copy), 0x7FFFFFFF)
            if timestamps is not None:
                tarr = np.asarray(timestamps)
                if tarr.ndim != 1 or (tarr.dtype.kind not in "iu" and tarr.size):
                    raise TypeError("timestamps: expected a sequence of ints (ns since the epoch)")
                if len(tarr) != n:
                    raise ValueError(f"timestamps: {len(tarr)} timestamps for {n} values")
                if tarr.dtype.kind == "u" and n and tarr.max() > 0x7FFFFFFFFFFFFFFF:
                    raise ValueError("timestamps: beyond the int64 range")
                tsv = np.ascontiguousarray(tarr, dtype=np.int64)
                for i in range(n):
                    items[i].ts = tsv[i]
            else:
                now = tl_now_ns()
                for i in range(n):
                    items[i].ts = now
            for i in range(n):
                if items[i].vlen > <size_t>(0xFFFFFFFF - 4096) or items[i].klen == 0x7FFFFFFF:
                    raise ValueError(f"values[{i}]: larger than a record can be")
            first = self._write_items(items, n, atomic) if n else self._next
        finally:
            for i in range(nbufs):
                PyBuffer_Release(&bufs[i])
            if arel:
                PyBuffer_Release(&abuf)
            free(items)
            free(bufs)
        if n and self._mode == MODE_ALWAYS:
            self._sync_to(first + n)
        elif n and self._mode == MODE_BATCH:
            now = tl_now_ns()
            if (now - self._last_sync_ns >= self._interval_ns and
                    (self._nf == NULL or not tl_flusher_active(self._nf))):
                self._batch_due(first + n)
        return first

    cdef int64_t _write_items(self, Item* items, Py_ssize_t n, bint atomic) except -1:
        """Write the batch holding the writer lock (it may roll or copy without the GIL, which
        lets other threads run: they wait); returns the first offset."""
        cdef int64_t first
        if self._written >= self._kick_at:
            self._pressure()
        if self._busy:
            self._wait_idle()
        self._lock_writer()
        try:
            self._check_write()             # closed (or failed) while the batch was prepared
            first = self._next
            self._write_locked(items, n, atomic)
        finally:
            self._unlock_writer()
        return first

    cdef int _write_locked(self, Item* items, Py_ssize_t n, bint atomic) except -1:
        cdef Py_ssize_t i, j
        cdef size_t total = 0, need, room
        for i in range(n):
            total += align8(FRAME_HEADER_SIZE + key_area(items[i].klen) + items[i].vlen)
        if atomic:
            if total > self._wcap - self._wpos:
                self._roll(total)
            self._write_run(items, n, total)
            return 0
        i = 0
        while i < n:
            room = self._wcap - self._wpos
            total = 0
            j = i
            while j < n:
                need = align8(FRAME_HEADER_SIZE + key_area(items[j].klen) + items[j].vlen)
                if total + need > room:
                    break
                total += need
                j += 1
            if j == i:
                self._roll(align8(FRAME_HEADER_SIZE + key_area(items[i].klen) + items[i].vlen))
                continue
            self._write_run(items + i, j - i, total)
            i = j
        return 0

    cdef int _write_run(self, Item* items, Py_ssize_t n, size_t total) except -1:
        """Frames for items[0..n) into the active segment (they fit), published as one batch.
        Large runs are framed in a staging buffer and written with pwrite: a store through the
        mapping into a fresh page faults and has the kernel zero the page first, a write of
        whole pages does not. Either way the first frame's length is stored last (mapping)."""
        cdef int fd = self._active.fd
        cdef int err = 0
        cdef Py_ssize_t i = 0, j
        cdef size_t pos = self._wpos, chunk, need
        if total < <size_t>self._pwrite_min or fd < 0:
            if total >= NOGIL_COPY_BYTES:
                with nogil:
                    self._frame_into(items, n, self._w + self._wpos, self._wpos, self._next, n)
            else:
                self._frame_into(items, n, self._w + self._wpos, self._wpos, self._next, n)
            self._publish_run(items, n, total)
            if self._tt != NULL:
                tl_toucher_kick(self._tt, self._wpos)
            return 0
        need = 0
        for j in range(n):
            need = max(need, align8(FRAME_HEADER_SIZE + key_area(items[j].klen) + items[j].vlen))
        if max(need, <size_t>STAGE_BYTES) > self._scap:
            self._grow_stage(max(need, <size_t>STAGE_BYTES))     # before anything is written
        while i < n:
            # as many frames as fit the staging buffer (at least one: it holds the largest)
            chunk = 0
            j = i
            while j < n:
                need = align8(FRAME_HEADER_SIZE + key_area(items[j].klen) + items[j].vlen)
                if j > i and chunk + need > STAGE_BYTES:
                    break
                chunk += need
                j += 1
            with nogil:
                self._frame_into(items + i, j - i, self._stage, pos, self._next + i,
                                 n if i == 0 else 0)
                err = pwrite_all(fd, self._stage, chunk, pos)
            if err:
                # nothing is published; clear what may have reached the file so that stale
                # frames never follow the next append
                memset(self._w + self._wpos, 0, pos + chunk - self._wpos)
                raise_oserror(err, self._active.path)
            pos += chunk
            i = j
        self._publish_run(items, n, total)
        return 0

    cdef void _frame_into(self, Item* items, Py_ssize_t n, char* dst, size_t pos, int64_t off,
                          Py_ssize_t batch) noexcept nogil:
        """Frame items[0..n) (offsets off..) at dst, which stands for segment position pos. With
        batch > 0 the first frame starts a batch of that many records and gets no length (it is
        published last). Index entries are noted."""
        cdef Py_ssize_t i
        cdef size_t at = 0
        for i in range(n):
            frame_write(dst + at, off + i, items[i].ts, items[i].k, items[i].klen,
                        items[i].v, items[i].vlen, <uint32_t>batch if i == 0 else 0,
                        not (i == 0 and batch != 0))
            self._index_note(pos + at, off + i, items[i].ts)
            at += align8(FRAME_HEADER_SIZE + key_area(items[i].klen) + items[i].vlen)

    cdef void _publish_run(self, Item* items, Py_ssize_t n, size_t total) noexcept:
        """The run's frames are in place: store the first frame's length, then the end offset."""
        tl_store_u32_release(self._w + self._wpos,
                             <uint32_t>(FRAME_HEADER_SIZE + key_area(items[0].klen) + items[0].vlen))
        self._wpos += total
        self._written += total
        self._next += n
        self._publish(CTL_END, self._next)

    cdef int _grow_stage(self, size_t need) except -1:
        cdef char* p = <char*>realloc(self._stage, need)
        if p == NULL:
            raise MemoryError()
        self._stage = p
        self._scap = need
        return 0

    cdef int _batch_due(self, int64_t target) except -1:
        """"batch" mode, a sync is due and this appending thread holds the GIL that the flusher
        thread would need to start it (measured: under a tight append loop the flusher then syncs
        every ~30 ms instead of 5): keep the promise "synced at least every sync_interval" here.
        (Yielding the GIL to the flusher instead was tried: gaps of 10 ms median, 39 ms p99.)
        Once close() began, nothing: it syncs every record published before (the caller's too,
        whose append must then return its offset, not LogClosedError)."""
        if self._closing:
            return 0
        self._sync_to(target)
        return 0

    # ---------------------------------------------------------------- durability

    def sync(self):
        """Make everything appended so far durable; returns durable_offset."""
        self._check_entry()
        self._stop_pretoucher()             # a log that syncs: see _start_pretoucher
        if self._closing:                   # (stopping it let other threads run)
            self._raise_state()
        return self._sync_to(self._next)

    cdef int64_t _sync_to(self, int64_t target) except -1:
        """Group commit: one thread at a time (the leader) syncs everything appended so far, with
        no lock held; the others wait on the condition and all wake when it is done: those it
        covered return, one of the rest leads the next sync."""
        cdef int rc = 0, fd
        cdef Segment active
        cdef bint ok = False
        cv = self._durable_cv
        lock = self._cv_lock
        if self._nf != NULL and tl_flusher_forked(self._nf):
            self._stop_flusher()            # a fork child's copy: the thread is the parent's
        # (the lock is taken and released by direct calls, not `with cv:`, whose Python-level
        # __enter__/__exit__ a signal handler could interrupt: see the lifecycle rule on top)
        lock.acquire()
        try:
            while True:
                # covered first: a record that a sync (close()'s last one included) made durable
                # is acknowledged, whatever happened to the log since
                if target <= self._durable and not self._dir_dirty:
                    return self._durable          # a sync that ran meanwhile covered us
                if self._failure is not None or self._closed:
                    self._raise_state()
                self._native_failed()
                if not self._syncing:
                    if self._nf == NULL or tl_owner_try(self._nf, TL_OWNER_PYTHON):
                        break
                    cv.wait(0.0002)               # the native flusher is syncing: soon done
                    continue
                cv.wait(SYNC_WAIT_SLICE)          # (a notification lost to an interrupt costs
                                                  # at most this)
            self._syncing = True
            self._sync_tid = PyThread_get_thread_ident()
            self._last_sync_ns = tl_now_ns()
            target = self._next
            written = self._written
            segs = list(self._unsynced)
            active = self._active
            dir_dirty = self._dir_dirty
            self._dir_dirty = False
        finally:
            lock.release()
        try:
            for seg in segs:
                fd = (<Segment>seg).fd
                if self._unsafe_ack:
                    continue
                with nogil:
                    rc = tl_datasync(fd)
                if rc != 0:
                    self._fail(errno, (<Segment>seg).path)
            if dir_dirty and not self._unsafe_ack:
                with nogil:
                    rc = fsync(self._dir_fd)
                if rc != 0:
                    self._fail(errno, self.path)
            now = _monotonic()
            if (self._nf == NULL and now - self._ctl_persisted >= CTL_PERSIST_SECONDS and
                    target > self._durable):
                # (with a flusher thread, it persists the checkpoint: _start_flusher)
                # the durable checkpoint on disk lags the real one by at most this interval
                # (recovery treats damage below it as corruption, above it as a torn tail)
                ctl_set(self._ctl, CTL_DURABLE, target)
                with nogil:
                    rc = msync(self._ctl, CONTROL_SIZE, MS_SYNC)
                if rc != 0:
                    self._fail(errno, os.path.join(self.path, CONTROL_NAME))
                self._ctl_persisted = now
            ok = True
        finally:
            self._end_sync(ok, target, written, segs, active)
        return self._durable

    cdef int _end_sync(self, bint ok, int64_t target, int64_t written, list segs,
                       Segment active) except -1:
        """The leader's epilogue: publish what it made durable and give up the leadership before
        anything that may run Python-level code (a signal handler may raise there, e.g.
        KeyboardInterrupt, or call this log again; with the leadership kept, every later sync
        and close() would wait for it forever); then wake the waiters, then run a close() that
        such code deferred."""
        cdef list done = []
        if ok:
            if self._nf != NULL:
                target = max(target, self._durable)   # (the native one's, if later)
            for seg in segs:
                if seg is not active and seg in self._unsynced:   # (retention may
                    self._unsynced.remove(seg)                      # have dropped it)
                    done.append(seg)
            if written > self._durable_bytes:
                tl_store_i64_release(&self._durable_bytes, written)
            if target > self._durable:
                self._durable = target
                self._publish(CTL_DURABLE, target)
                if self._nf != NULL:
                    tl_flusher_note_durable(self._nf)
            self._nf_update()
        self._syncing = False
        self._sync_tid = 0
        if self._nf != NULL:
            tl_owner_release(self._nf)
        for seg in done:                  # (out of _unsynced: no other leader syncs them)
            (<Segment>seg).close_fd()
        self._cv_lock.acquire()
        try:
            self._durable_cv.notify_all()
        finally:
            self._cv_lock.release()
        if self._close_deferred and self._wlock_tid != PyThread_get_thread_ident():
            self._deferred_close()
        return 0

    cdef int _fail(self, int err, str path) except -1:
        cause = OSError(err, os.strerror(err), path)
        self._failure = LogFailedError(
            f"{path}: sync failed ({os.strerror(err)}); the writer is stopped for good and nothing "
            f"after offset {self._durable} is acknowledged; reopen the log to recover")
        self._wstate = 3
        with self._durable_cv:
            self._durable_cv.notify_all()
        self._wake_sleepers()
        raise self._failure from cause

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
            # _end_sync). Appends are refused from now on.
            self._close_deferred = True
            return
        self._wlock.acquire()                # a batch or roll in progress finishes first
        self._wlock_tid = PyThread_get_thread_ident()
        try:
            err = tl_flusher_err(self._nf) if self._nf != NULL else 0
            self._stop_flusher()
            self._stop_pretoucher()          # (its pages ahead need not be synced below)
            if err and self._failure is None:
                try:                         # recorded, not raised: close() still closes
                    self._fail(err, self._active.path if self._active is not None else self.path)
                except LogFailedError:
                    pass
            if not self._readonly and self._failure is None:
                self._sync_to(self._next)
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
        self._stop_pretoucher()          # before any mapping goes
        if self._ctl != NULL and self._waiting and not self._inherited():
            self._wake_sleepers()        # this process's sleepers see the log closed
        for seg in self._segments:
            (<Segment>seg).close_fd()
        self._unsynced = []
        self._active = None
        self._w = NULL
        self._wcap = 0
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
        self._stop_flusher()
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
        self._stop_flusher()
        self._teardown()

    # ---------------------------------------------------------------- lookup

    cdef Segment _seg_for(self, int64_t offset):
        """The segment holding `offset` (which the caller checked is in the log). Listing the
        directory lets other threads run: checks the log is still open after it."""
        cdef Py_ssize_t lo, hi, mid
        self._check_open()
        if self._readonly and (self._nbases == 0 or self._gen != ctl_get(self._ctl, CTL_GENERATION)
                               or (offset >= self._bases[self._nbases - 1] and
                               ctl_get(self._ctl, CTL_ACTIVE_BASE) != self._bases[self._nbases - 1])):
            self._load_segments()
            self._check_open()
        lo = 0
        hi = self._nbases
        while lo < hi:
            mid = (lo + hi) // 2
            if self._bases[mid] <= offset:
                lo = mid + 1
            else:
                hi = mid
        if lo == 0:
            if self._readonly:
                self._load_segments()
                self._check_open()
                if self._nbases and self._bases[0] <= offset:
                    return self._seg_for(offset)
            if offset < self._start_now():
                raise OffsetOutOfRangeError(f"offset {offset} is below start_offset "
                                            f"{self._start_now()} of {self.path}")
            raise CorruptLogError(f"{self.path}: the segment holding offset {offset} is missing; "
                                  f"run `tidelog verify {self.path}`", path=self.path,
                                  position=None, offset=offset)
        if lo > len(self._segments):
            raise CorruptLogError(f"{self.path}: segment list changed while reading",
                                  path=self.path, position=None, offset=offset)
        seg = self._segments[lo - 1]
        if not (self._lru and self._lru[len(self._lru) - 1] is seg):
            self._touch(seg)
        return seg

    cdef _touch(self, Segment seg):
        """seg is about to be read (or was just sealed): keep it mapped, unmap the least
        recently used beyond _max_mapped (never the active segment). Every use of a sealed
        segment's mapping comes here first."""
        cdef Segment old
        if seg is self._active:
            return
        try:
            self._lru.remove(seg)
        except ValueError:
            pass
        self._lru.append(seg)
        while len(self._lru) > self._max_mapped:
            old = self._lru.pop(0)
            if old.mapping:                 # another thread is mapping it: not now
                self._lru.append(old)
                break
            if old is not self._active:
                old.unmap()

    def _refresh(self):
        if self._readonly:
            self._load_segments()

    def read(self, offset):
        """The record at `offset`."""
        cdef int64_t off, at, end
        cdef Segment seg
        cdef Py_ssize_t pos
        cdef uint32_t length
        cdef int rc
        if not PyLong_CheckExact(offset):
            offset = _args.integer(offset, "offset")      # numpy integers; never a bool
        self._check_open()
        end = self._end_now()
        try:
            off = offset
        except OverflowError:
            raise OffsetOutOfRangeError(f"offset {offset} is outside the log "
                                        f"[{self._start_now()}, {end})") from None
        if off < self._start_now() or off >= end:
            raise OffsetOutOfRangeError(f"offset {off} is outside the log [{self._start_now()}, {end})")
        try:
            seg = self._seg_for(off)
            pos = seg.find_checked(off, &length, &rc)       # (mapping it lets threads run)
        except CorruptLogError:
            self._check_open()
            if off < self._start_now():         # retention deleted it meanwhile
                raise OffsetOutOfRangeError(f"offset {off} is below start_offset "
                                            f"{self._start_now()} of {self.path}") from None
            raise
        self._check_open()
        if rc != FRAME_OK and self._readonly:
            # a directory listing taken while the writer renamed a new segment into place can
            # miss it (readdir is not atomic against renames): list again before calling it damage
            self._load_segments()
            seg = self._seg_for(off)
            pos = seg.find_checked(off, &length, &rc)
            self._check_open()
        if rc != FRAME_OK:
            raise corrupt(seg.path, pos, off, rc)
        return make_record(seg, pos, length)

    def offset_for_time(self, timestamp):
        """The first offset whose record has timestamp >= `timestamp` (ns since the epoch), or
        end_offset when there is none. Timestamps may go backwards: each segment's time index
        holds the running maximum every 64 records, which is monotonic, so a binary search
        finds the 64-record window where the maximum first reaches `timestamp`; the record
        there is the first one at or after it."""
        cdef int64_t ts = to_timestamp(timestamp, "timestamp")
        cdef int64_t end, off, last, r
        cdef Segment seg
        self._check_open()
        end = self._end_now()
        off = self._start_now()
        while off < end:
            seg = self._seg_for(off)
            last = end if seg.next_base < 0 or seg.next_base > end else seg.next_base
            r = seg_first_at(seg, max(off, seg.base), last, ts)
            if r >= 0:
                return r
            if seg.next_base < 0 or seg.next_base <= off:
                break
            off = seg.next_base
        return end

    def _index_problems(self):
        """[(index file, entries that disagree with the frames)] for segments whose .idx or
        .tix is missing, damaged or wrong. Reads every frame's length (not its CRC)."""
        out = []
        self._check_open()
        if self._readonly:
            self._load_segments()
        for seg in self._segments:
            self._touch(seg)
            self._check_open()          # (the last segment's mapping let threads run)
            bad = index_mismatches(seg, self._end_now())
            if bad:
                out.append(((<Segment>seg).path[:len((<Segment>seg).path) - 4] + ".idx", bad))
        return out

    def _rebuild_indexes(self):
        """Rewrite every sealed segment's index files from its frames (the active segment's
        index is the writer's own). For repairs."""
        cdef Segment seg, fresh
        if self._readonly:
            raise TidelogError("rebuilding indexes needs the writer")
        n = 0
        for i in range(len(self._segments) - 1):
            seg = self._segments[i]
            self._touch(seg)
            if not index_mismatches(seg, self._next):
                continue
            fresh = self._new_segment_obj(seg.base, True)
            fresh.next_base = seg.next_base
            for ext in (".idx", ".tix"):
                try:
                    os.unlink(seg.path[:len(seg.path) - 4] + ext)
                except FileNotFoundError:
                    pass
            fresh.ensure()
            if fresh.idx == NULL:
                raise TidelogError(f"{fresh.path}: could not make its index files")
            rebuild_index(fresh)
            fresh.close_fd()
            fresh.writable = False
            self._segments[i] = fresh
            self._touch(fresh)
            n += 1
        return n

    def _salvage(self):
        """Yield every CRC-valid record of the log in offset order, skipping damage: after a bad
        frame, look for the next valid one at every 8-byte position (an operator's last resort,
        see `tidelog repair --salvage-to`). Offsets may then have gaps. Reads segments with a
        damaged header too, one at a time (each is unmapped when done, whatever its records'
        views keep alive)."""
        cdef Segment seg
        cdef size_t pos
        cdef uint32_t length
        cdef int64_t last = -1, off
        cdef int rc
        self._check_open()
        if self._readonly:
            self._load_segments()
        for known in list(self._segments):
            seg = self._new_segment_obj((<Segment>known).base, False)
            seg.any_header = True
            try:
                seg.ensure()
            except (CorruptLogError, OSError):
                continue                                  # a missing or unreadable segment
            pos = SEGMENT_HEADER_SIZE
            while pos + FRAME_HEADER_SIZE <= seg.cap:
                rc = frame_check(seg.data, seg.cap, pos, -1, &length)
                off = rd_i64(seg.data + pos + 8) if rc == FRAME_OK else -1
                if rc == FRAME_OK and off > last:
                    yield make_record(seg, pos, length)
                    if seg.data == NULL:
                        seg.ensure()            # unmapped meanwhile: the positions still hold
                    last = off
                    pos += align8(length)
                else:
                    pos += FRAME_ALIGN
            seg.unmap()

    def _segment_info(self):
        """[(base, path)] of the segments, for tools."""
        self._check_open()
        if self._readonly:
            self._load_segments()
            self._check_open()
        return [((<Segment>s).base, (<Segment>s).path) for s in self._segments]


cdef inline int64_t pressure_step(int64_t bound) noexcept nogil:
    """How often (bytes written) an appender in "batch" mode looks at how far ahead it is."""
    return max(bound // 8, <int64_t>4096)


cdef void* realloc_bases(int64_t* p, Py_ssize_t n) except NULL:
    cdef void* q = realloc(p, n * sizeof(int64_t))
    if q == NULL:
        raise MemoryError()
    return q


cdef int pwrite_all(int fd, const char* buf, size_t n, size_t pos) noexcept nogil:
    """pwrite every byte (short writes and EINTR retried); 0 or an errno."""
    cdef ssize_t w
    while n:
        w = pwrite(fd, buf, n, <off_t>pos)
        if w < 0:
            if errno == EINTR:
                continue
            return errno
        if w == 0:
            return EIO
        buf += w
        pos += <size_t>w
        n -= <size_t>w
    return 0


cdef Py_ssize_t index_mismatches(Segment s, int64_t log_end) except -1:
    """Index entries of s that are missing or disagree with its frames (hints that would cost a
    scan), counting a missing index as one."""
    cdef size_t pos = SEGMENT_HEADER_SIZE
    cdef int64_t off, end
    cdef uint32_t length
    cdef uint64_t rel
    cdef int64_t maxts = -(1 << 62), ts
    cdef Py_ssize_t bad = 0
    s.ensure()
    if s.idx == NULL:
        return 1
    off = s.base
    end = s.next_base if s.next_base >= 0 else log_end
    while off < end and frame_shape(s.data, s.cap, pos, off, &length) == FRAME_OK:
        rel = <uint64_t>(off - s.base)
        ts = rd_i64(s.data + pos + 16)
        if ts > maxts:
            maxts = ts
        if rel % s.idx_stride == 0 and (rel // s.idx_stride >= s.idx_slots or
                                        rd_u32(s.idx + (rel // s.idx_stride) * 4) != pos):
            bad += 1
        if rel % TIX_STRIDE == 0 and (rel // TIX_STRIDE >= s.tix_slots or
                                      rd_i64(s.tix + (rel // TIX_STRIDE) * 8) != maxts):
            bad += 1
        pos += align8(length)
        off += 1
    return bad


cdef unlink_segment_files(list segs):
    for seg in segs:
        stem = (<Segment>seg).path[:len((<Segment>seg).path) - 4]
        for ext in (".seg", ".idx", ".tix"):
            try:
                os.unlink(stem + ext)
            except FileNotFoundError:
                pass


cdef int frames_max_ts(const char* data, size_t cap, size_t* pos, int64_t* off, int64_t end,
                       int64_t* newest) noexcept nogil:
    """Check the frames from *pos (offset *off) up to offset `end` (FORMAT.md rules 1-4, CRC
    included) and raise *newest to the newest timestamp among them. FRAME_OK, or the problem
    of the frame at *pos / *off."""
    cdef uint32_t length
    cdef int rc
    cdef int64_t t
    while off[0] < end:
        rc = frame_check(data, cap, pos[0], off[0], &length)
        if rc != FRAME_OK:
            return rc
        t = rd_i64(data + pos[0] + 16)
        if t > newest[0]:
            newest[0] = t
        pos[0] += align8(length)
        off[0] += 1
    return FRAME_OK


cdef bint seg_holds_newer(Segment seg, int64_t next_base, int64_t cutoff) except -1:
    """Whether the sealed segment [seg.base, next_base) holds a record with timestamp >= cutoff
    (retention by time keeps it then). Decided from CRC-checked frames only, never from the
    time index: its pages are not synced, and after a power loss its entries read 0, which
    would make recent records look old. The last record answers when it is that new
    (timestamps mostly grow); otherwise every frame is read, once: the newest timestamp is
    kept in seg.newest_ts (which a writer also knows for the segments it filled from empty).
    A mapping made here is released."""
    cdef bint was_mapped = seg.data != NULL
    cdef Py_ssize_t p
    cdef size_t pos = SEGMENT_HEADER_SIZE
    cdef int64_t off = seg.base, newest = INT64_MIN
    cdef uint32_t length
    cdef int rc
    cdef const char* data
    cdef size_t cap
    if seg.newest_ts != TS_UNKNOWN:
        return seg.newest_ts >= cutoff
    if next_base <= seg.base:
        return False
    try:
        p = seg.find_checked(next_base - 1, &length, &rc)
        if rc != FRAME_OK:
            raise corrupt(seg.path, p, next_base - 1, rc)
        if rd_i64(seg.data + p + 16) >= cutoff:
            return True
        m = seg.map                     # held: the mapping stays while the GIL is released
        data = seg.data
        cap = seg.cap
        with nogil:
            rc = frames_max_ts(data, cap, &pos, &off, next_base, &newest)
        if rc != FRAME_OK:
            raise corrupt(seg.path, pos, off, rc)
        seg.newest_ts = newest
        return newest >= cutoff
    finally:
        if not was_mapped and not seg.mapping:
            seg.unmap()


cdef int64_t seg_scan_time(Segment seg, int64_t first, int64_t last, int64_t ts) except -2:
    """First offset in [first, last) of `seg` whose timestamp >= ts, or -1. Checks each frame."""
    cdef int64_t at, off = first
    cdef uint32_t length
    cdef Py_ssize_t pos
    cdef int rc
    if first >= last:
        return -1
    pos = seg.find_checked(first, &length, &rc)
    while True:
        if rc != FRAME_OK:
            raise corrupt(seg.path, pos, off, rc)
        if rd_i64(seg.data + pos + 16) >= ts:
            return off
        off += 1
        if off >= last:
            return -1
        pos += align8(length)
        rc = seg.check(pos, off, &length)


cdef enum:
    TIX_UNUSABLE = -3       # tix_first_at: the time index cannot answer, scan instead


cdef bint tix_in_order(Segment seg, int64_t jmax) noexcept:
    """Whether .tix entries 0..jmax never decrease, as running maxima must (entries scrambled
    or partly rewritten fail it). Entries found in order are remembered: each is read once."""
    cdef size_t j = seg.tix_sorted
    cdef int64_t prev = rd_i64(seg.tix + (j - 1) * 8) if j else INT64_MIN, t
    while <int64_t>j <= jmax:
        t = rd_i64(seg.tix + j * 8)
        if t < prev:
            return False
        prev = t
        j += 1
    if j > seg.tix_sorted:
        seg.tix_sorted = j
    return True


cdef int scan_window(Segment seg, int64_t a, int64_t b, int64_t ts, bint stop,
                     int64_t* newest, int64_t* found) except -2:
    """Read records [a, b) of seg, each CRC-checked: raise *newest to their newest timestamp
    and set *found (when < 0) to the first whose timestamp >= ts; with stop, return as soon as
    one is found. FRAME_OK, or the problem of a frame (the caller falls back to a scan)."""
    cdef Py_ssize_t pos
    cdef uint32_t length
    cdef int rc
    cdef int64_t off = a, t
    if a >= b:
        return FRAME_OK
    pos = seg.find_checked(a, &length, &rc)
    while True:
        if rc != FRAME_OK:
            return rc
        t = rd_i64(seg.data + pos + 16)
        if t >= ts and found[0] < 0:
            found[0] = off
            if stop:
                return FRAME_OK
        if t > newest[0]:
            newest[0] = t
        off += 1
        if off >= b:
            return FRAME_OK
        pos += align8(length)
        rc = seg.check(pos, off, &length)


cdef int64_t tix_first_at(Segment seg, int64_t last, int64_t ts) except -2:
    """First offset in [seg.base, last) whose timestamp >= ts as the time index says, checked
    against the frames: -1 for none, TIX_UNUSABLE when the index cannot be used for it.

    Entry j is the running maximum of records base .. base + 64 j: it must be the larger of
    entry j-1 and the newest record of its window (base + 64 (j-1), base + 64 j]. A binary
    search finds lo with entry lo-1 < ts <= entry lo, and the answer rests on those two
    entries: entry lo-1 says no record up to base + 64 (lo-1) reaches ts, entry lo that one in
    its window does. So the entries must never decrease, entry lo-1 must not be 0 (FORMAT.md:
    not written), the windows since the entry where the maximum became entry lo-1 must reach
    exactly that value, and window lo with it must give entry lo (frames read whole,
    CRC-checked); the answer is the first record of window lo reaching ts. A power loss
    leaves each entry right or 0, and scrambled entries are out of order: both are caught,
    and so are entries shifted, copied or lowered. What is not: entries before that plateau
    rewritten in order to values that agree with every frame read here (the index stays a
    hint, trusted that far; only a scan proves). Cost: the windows of one plateau, which is
    one window when timestamps grow, up to the segment when they are random (then remembered:
    the same plateau's frames are not read again)."""
    cdef int64_t jmax, lo, hi, mid, k, bound, b, r = -1, newest, unused = -1
    if seg.tix == NULL or last <= seg.base:
        return TIX_UNUSABLE
    jmax = min((last - 1 - seg.base) // TIX_STRIDE, <int64_t>seg.tix_slots - 1)
    if not tix_in_order(seg, jmax):
        return TIX_UNUSABLE
    lo = 0
    hi = jmax + 1
    while lo < hi:                      # smallest j with tix[j] >= ts
        mid = (lo + hi) // 2
        if rd_i64(seg.tix + mid * 8) >= ts:
            hi = mid
        else:
            lo = mid + 1
    newest = INT64_MIN
    if lo > 0:
        bound = rd_i64(seg.tix + (lo - 1) * 8)
        if bound == 0:
            return TIX_UNUSABLE
        k = 0                           # the entry where the running maximum became `bound`
        hi = lo - 1
        while k < hi:
            mid = (k + hi) // 2
            if rd_i64(seg.tix + mid * 8) >= bound:
                hi = mid
            else:
                k = mid + 1
        if seg.tix_pk >= 0 and seg.tix_pk <= k and lo - 1 <= seg.tix_pe and bound == seg.tix_pv:
            newest = bound              # those frames were read before (they never change)
        else:
            if k > 0:
                newest = rd_i64(seg.tix + (k - 1) * 8)
            # windows k .. lo-1 (a plateau of equal entries): their records reach `bound`
            if (scan_window(seg, seg.base + (k - 1) * TIX_STRIDE + 1 if k > 0 else seg.base,
                            seg.base + (lo - 1) * TIX_STRIDE + 1, INT64_MIN, False, &newest,
                            &unused) != FRAME_OK or newest != bound):
                return TIX_UNUSABLE
            seg.tix_pk = k
            seg.tix_pe = lo - 1
            seg.tix_pv = bound
    b = last if lo > jmax else seg.base + lo * TIX_STRIDE + 1      # window lo ends before b
    # (past the last entry nothing checks the window: the first record found answers)
    if scan_window(seg, seg.base + (lo - 1) * TIX_STRIDE + 1 if lo > 0 else seg.base, b, ts,
                   lo > jmax, &newest, &r) != FRAME_OK:
        return TIX_UNUSABLE             # (the scan that follows reports real damage)
    if lo <= jmax and newest != rd_i64(seg.tix + lo * 8):
        return TIX_UNUSABLE
    return r


cdef int64_t seg_first_at(Segment seg, int64_t first, int64_t last, int64_t ts) except -2:
    """First offset in [first, last) of `seg` with timestamp >= ts, or -1: through the time
    index when it can answer (tix_first_at checks it against the frames), else by a scan."""
    cdef int64_t r
    if first >= last:
        return -1
    seg.ensure()
    r = tix_first_at(seg, last, ts)
    if r == TIX_UNUSABLE or (r >= 0 and r < first):
        return seg_scan_time(seg, first, last, ts)
    return r


cdef rebuild_index(Segment s):
    """Fill the (fresh, zeroed) index files of a writable segment from its frames."""
    cdef size_t pos = SEGMENT_HEADER_SIZE
    cdef int64_t off = s.base, ts, maxts = -(1 << 62)
    cdef uint32_t length
    cdef uint64_t rel
    while frame_shape(s.data, s.cap, pos, off, &length) == FRAME_OK:
        rel = <uint64_t>(off - s.base)
        ts = rd_i64(s.data + pos + 16)
        if ts > maxts:
            maxts = ts
        if rel % s.idx_stride == 0:
            wr_u32(s.idx + (rel // s.idx_stride) * 4, <uint32_t>pos)
        if rel % TIX_STRIDE == 0:
            wr_i64(s.tix + (rel // TIX_STRIDE) * 8, maxts)
        pos += align8(length)
        off += 1
    msync(s.idx_map.addr, s.idx_map.size, MS_SYNC)
    msync(s.tix_map.addr, s.tix_map.size, MS_SYNC)


cdef zero_tail(Segment s, size_t pos):
    """Zero a segment from pos to its end, so that no stale frame can follow the next append:
    fallocate(FALLOC_FL_ZERO_RANGE) where the system has it (the blocks stay allocated), else
    by clearing through the mapping whatever is not zero."""
    cdef size_t chunk = 65536, a = pos, b
    cdef size_t end = min(s.cap, s.alloc)      # prealloc.pxi: beyond it holes (zeros)
    if pos >= end:
        return
    if tl_zero_range(s.fd, pos, end - pos) == 0:
        return
    while a < end:
        b = min(end, (a // chunk + 1) * chunk)
        if not all_zero(s.data + a, b - a):
            memset(s.data + a, 0, b - a)
        a = b


cdef Py_buffer* grow_bufs(Py_buffer* p, Py_ssize_t* cap) except NULL:
    """Room for more held buffers (only non-bytes elements of a batch need one)."""
    cdef Py_ssize_t n = max(16, cap[0] * 2)
    cdef Py_buffer* q = <Py_buffer*>realloc(p, n * sizeof(Py_buffer))
    if q == NULL:
        raise MemoryError()
    cap[0] = n
    return q


cdef bint all_zero(const char* p, size_t n) noexcept nogil:
    cdef size_t i = 0
    cdef uint64_t w
    while i + 8 <= n:
        memcpy(&w, p + i, 8)
        if w != 0:
            return False
        i += 8
    while i < n:
        if p[i] != 0:
            return False
        i += 1
    return True


cdef object get_buffer(object obj, Py_buffer* view, str name):
    """Fill view with obj's contiguous buffer and return None; or return a bytes copy of a
    non-contiguous buffer; TypeError naming the argument for anything else."""
    if not PyObject_CheckBuffer(obj):
        raise TypeError(f"{name}: expected a bytes-like object (bytes, bytearray, memoryview, "
                        f"numpy array), not {type(obj).__name__}")
    try:
        PyObject_GetBuffer(obj, view, PyBUF_SIMPLE)
        return None
    except (BufferError, ValueError):     # not contiguous (memoryview / numpy say it differently)
        return memoryview(obj).tobytes()


cdef int64_t to_timestamp(object t, str name) except? -1:
    if not PyLong_CheckExact(t):
        try:
            t = _args.integer(t, name)      # numpy integers; never a bool
        except TypeError:
            raise TypeError(f"{name}: expected an int (ns since the epoch), not "
                            f"{type(t).__name__}") from None
    try:
        return t
    except OverflowError:
        raise ValueError(f"{name}: {t} is outside the int64 range") from None
