# The control page (tidelog.ctl): its fields as atomics (ctl_get / ctl_set), the futex wake words,
# and waiting on them - a reader in any process sleeps in wait_ctl until the end or durable offset
# passes a position; the writer publishes (LogCore._publish) and wakes (wake_sleepers).
# Creating and checking the page at open (create_control, check_control) live here too.
# Owns: the layout of the page (CTL_* in includes/sys.pxd) and the wake protocol. Writes the
# LogCore field _waiting (threads of this process asleep here; pressure counts its own there too).
# Releases the GIL: wait_for sleeps in wait_ctl without it; the page stays mapped until the LogCore
# is collected, and wait_for re-checks _check_open() after every slice.


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


cdef create_control(LogCore self, str ctl_path):
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


cdef check_control(LogCore self, str ctl_path):
    with open(ctl_path, "rb") as f:
        h = f.read(CONTROL_SIZE)
    if len(h) < CONTROL_SIZE or h[0:8] != CONTROL_MAGIC:
        raise NotALogError(f"{ctl_path}: not a tidelog control file (bad magic or size); "
                           f"this directory does not hold a tidelog log")
    version = int.from_bytes(h[8:12], "little")
    if version != FORMAT_VERSION:
        raise format_version_error(self.path, version)


cdef object wait_for(LogCore self, int64_t position, bint durable, timeout=None, double spin=0.0,
                     cancel=None):
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
                native_failed(self)
            if cancel is not None and cancel.is_set():
                return False
            PyErr_CheckSignals()
            spin_ns = 0
    finally:
        self._waiting -= 1


cdef object wake_own_sleepers(LogCore self):
    if self._ctl != NULL and self._ctl_rw:
        tl_add_u32(self._ctl + CTL_WAKE_END, 1)
        tl_futex_wake(self._ctl + CTL_WAKE_END)
        tl_add_u32(self._ctl + CTL_WAKE_DURABLE, 1)
        tl_futex_wake(self._ctl + CTL_WAKE_DURABLE)
