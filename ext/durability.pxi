# Durability: group commit (sync_to: one leader syncs for every waiter, end_sync publishes the new
# durable offset), the "batch" mode's timing and backpressure (batch_due, pressure), the native
# flusher thread's and the pretoucher's control (start_/stop_flusher, nf_update, native_failed,
# start_/stop_pretoucher), and fail-stop (fail_stop: a failed sync stops the writer for good).
# Writes: _durable, _syncing, _sync_tid, _last_sync_ns, _ctl_persisted, _kick_at, _nf, _tt,
# _failure, _wstate (fail-stop only), _dir_dirty, _waiting.
# Releases the GIL: the leader's fdatasync/fsync calls (no other leader meanwhile: _syncing under
# _durable_cv); the native threads run without it and see only what nf_update hands them.


cdef inline int64_t pressure_step(int64_t bound) noexcept nogil:
    """How often (bytes written) an appender in "batch" mode looks at how far ahead it is."""
    return max(bound // 8, <int64_t>4096)


cdef start_pretoucher(LogCore self):
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
        tl_toucher_target(self._tt, self._w, self._whard)


cdef stop_pretoucher(LogCore self):
    cdef tl_toucher* t = self._tt
    if t != NULL:
        self._tt = NULL
        with nogil:
            tl_toucher_free(t)          # waits for a chunk in progress


cdef object pretouch_off(LogCore self):
    stop_pretoucher(self)


cdef start_flusher(LogCore self):
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
    nf_update(self)
    rc = tl_flusher_start(self._nf)
    if rc:
        tl_flusher_free(self._nf)
        self._nf = NULL
        raise OSError(rc, f"cannot start the flusher thread: {os.strerror(rc)}")


cdef stop_flusher(LogCore self):
    cdef tl_flusher* f = self._nf
    if f != NULL:
        with nogil:
            tl_flusher_free(f)          # waits for a sync in progress
        self._nf = NULL


cdef void nf_update(LogCore self):
    """Hand the native flusher the active segment when it is the only file to sync."""
    if self._nf == NULL:
        return
    # not during a roll: it let other threads run (os calls) before the new segment shows
    # in _dir_dirty/_unsynced, and handing the old segment back then would let the flusher
    # acknowledge records of the new one with a sync of the old
    simple = (not self._rolling and self._active is not None and not self._dir_dirty and
              len(self._unsynced) == 1 and self._unsynced[0] is self._active)
    tl_flusher_set_fd(self._nf, self._active.fd if simple else -1)


cdef int native_failed(LogCore self) except -1:
    """Raise LogFailedError if the native flusher's sync failed."""
    cdef int err
    if self._nf != NULL:
        err = tl_flusher_err(self._nf)
        if err:
            if self._failure is not None:
                raise self._failure
            fail_stop(self, err, self._active.path if self._active is not None else self.path)
    return 0


cdef int pressure(LogCore self) except -1:
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
            sync_to(self, self._next)          # after a roll Python's group commit syncs
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


cdef int batch_due(LogCore self, int64_t target) except -1:
    """"batch" mode, a sync is due and this appending thread holds the GIL that the flusher
    thread would need to start it (measured: under a tight append loop the flusher then syncs
    every ~30 ms instead of 5): keep the promise "synced at least every sync_interval" here.
    (Yielding the GIL to the flusher instead was tried: gaps of 10 ms median, 39 ms p99.)
    Once close() began, nothing: it syncs every record published before (the caller's too,
    whose append must then return its offset, not LogClosedError)."""
    if self._closing:
        return 0
    sync_to(self, target)
    return 0


cdef object sync_now(LogCore self):
    self._check_entry()
    stop_pretoucher(self)             # a log that syncs: see start_pretoucher
    if self._closing:                   # (stopping it let other threads run)
        self._raise_state()
    return sync_to(self, self._next)


cdef int64_t sync_to(LogCore self, int64_t target) except -1:
    """Group commit: one thread at a time (the leader) syncs everything appended so far, with
    no lock held; the others wait on the condition and all wake when it is done: those it
    covered return, one of the rest leads the next sync."""
    cdef int rc = 0, fd
    cdef Segment active
    cdef bint ok = False
    cv = self._durable_cv
    lock = self._cv_lock
    if self._nf != NULL and tl_flusher_forked(self._nf):
        stop_flusher(self)            # a fork child's copy: the thread is the parent's
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
            native_failed(self)
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
                fail_stop(self, errno, (<Segment>seg).path)
        if dir_dirty and not self._unsafe_ack:
            with nogil:
                rc = fsync(self._dir_fd)
            if rc != 0:
                fail_stop(self, errno, self.path)
        now = _monotonic()
        if (self._nf == NULL and now - self._ctl_persisted >= CTL_PERSIST_SECONDS and
                target > self._durable):
            # (with a flusher thread, it persists the checkpoint: start_flusher)
            # the durable checkpoint on disk lags the real one by at most this interval
            # (recovery treats damage below it as corruption, above it as a torn tail)
            ctl_set(self._ctl, CTL_DURABLE, target)
            with nogil:
                rc = msync(self._ctl, CONTROL_SIZE, MS_SYNC)
            if rc != 0:
                fail_stop(self, errno, os.path.join(self.path, CONTROL_NAME))
            self._ctl_persisted = now
        ok = True
    finally:
        end_sync(self, ok, target, written, segs, active)
    return self._durable


cdef int end_sync(LogCore self, bint ok, int64_t target, int64_t written, list segs,
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
        nf_update(self)
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


cdef int fail_stop(LogCore self, int err, str path) except -1:
    cause = OSError(err, os.strerror(err), path)
    self._failure = LogFailedError(
        f"{path}: sync failed ({os.strerror(err)}); the writer is stopped for good and nothing "
        f"after offset {self._durable} is acknowledged; reopen the log to recover")
    self._wstate = 3
    with self._durable_cv:
        self._durable_cv.notify_all()
    self._wake_sleepers()
    raise self._failure from cause
