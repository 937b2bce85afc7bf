# Allocation ahead in steps (the disk footprint): a segment file is made at its full size (its
# capacity) but with only its first PREALLOC_FIRST bytes allocated, the rest holes; its writer
# allocates it further (fallocate inside the file), a step at a time, just before a record would
# not fit in what is allocated; its .idx and .tix grow with it (in size), always first, to hold
# the entries of every record the allocated part can hold. (The size stays the capacity: page
# faults on a file whose size moves up just ahead of the writer map one page each, where a
# full-size file gets several per fault - appends of 100 B were 30 % slower that way.) Owns the
# allocation of the active segment's files: only the writer calls prealloc_activate /
# grow_active (holding its writer lock); readers only ever look at sizes (Segment.grew,
# grew_index). Lets other threads run only inside fallocate (GIL released, writer lock held).
#
# The writer asks for the next step early, at a mark half a step before the allocated end
# (LogCore._wcap; it may store up to _whard): the pretoucher populates a window ahead of the
# writer and stops at the allocated end, so a step taken only when the writer reached that end
# left the writer taking its own page faults behind it after every step (single appends of
# 100 B were 9-10 % slower than with whole preallocation). If the disk refuses at the mark,
# nothing is reported: the writer goes on to _whard and asks again there, where a refusal is
# LogFullError.
#
# The guarantee is the one full preallocation gave: every byte the writer stores through its
# mapping, and every page the pretoucher populates, lies inside the allocated part (less a
# slack page, so readers never fault a hole either), so a full disk
# is ENOSPC from fallocate - LogFullError at the append that needed the step, with nothing of it
# written and every earlier record kept - never a SIGBUS. Files never shrink while a log is open
# (a reader maps each at its nominal size and reads only what the file held when it looked).

cdef enum:
    PREALLOC_FIRST = 64 << 10       # a new segment file: header and the first records
    PREALLOC_MAX_STEP = 8 << 20     # steps double from PREALLOC_FIRST up to this, then stay
    PREALLOC_ALIGN = 64 << 10       # segment sizes are multiples of this (or the capacity)
    INDEX_ALIGN = 4096              # index file sizes are multiples of this (or the nominal)
    PREALLOC_SLACK = 4096           # the writer stops this far before the end of what is allocated
    GROW_AHEAD = 2 << 20            # ... and asks for the next step this far before that (the
                                    # pretoucher's window, 1 MiB, and a margin)


cdef size_t nominal_capacity(bytes h, size_t size, int64_t base, str path) except 0:
    """The capacity a valid segment header states (the file may be shorter: allocated in
    steps); a capacity that no segment can have is damage."""
    cdef int64_t c = int.from_bytes(h[32:40], "little", signed=True)
    if c < SEGMENT_HEADER_SIZE + FRAME_HEADER_SIZE or c > MAX_SEGMENT_BYTES:
        raise CorruptLogError(f"{path}: segment header states a capacity of {c} bytes",
                              path=path, position=32, offset=base)
    return max(<size_t>c, size)


cdef tuple segment_fpaths(str path):
    stem = path[:len(path) - 4]
    return (os.fsencode(path), os.fsencode(stem + ".idx"), os.fsencode(stem + ".tix"))


cdef inline int64_t prealloc_first(int64_t capacity) noexcept:
    """Bytes allocated when a segment of this capacity is created."""
    return min(capacity, <int64_t>PREALLOC_FIRST)


cdef inline size_t index_alloc_bytes(size_t need, size_t nominal) noexcept:
    """An index file size holding `need` bytes: whole pages, never past the nominal size."""
    return min((need + INDEX_ALIGN - 1) // INDEX_ALIGN * INDEX_ALIGN, nominal)


cdef int index_cover_err(Segment s, int64_t records) except -1:
    """Grow s's .idx and .tix to hold the entries of `records` records: 0, or an errno value
    (then nothing is recorded as grown; what got allocated is zeros)."""
    cdef size_t islots, tslots, iw = 0, tw = 0
    cdef const char* ip
    cdef const char* tp
    cdef int err = 0
    if s.idx == NULL or records < 0:
        return 0
    islots = <size_t>records // s.idx_stride + 1
    tslots = <size_t>records // TIX_STRIDE + 1
    if islots <= s.idx_slots and tslots <= s.tix_slots:
        return 0
    if islots > s.idx_slots:
        iw = index_alloc_bytes(INDEX_HEADER_SIZE + islots * 4, s.idx_map.size)
    if tslots > s.tix_slots:
        tw = index_alloc_bytes(INDEX_HEADER_SIZE + tslots * 8, s.tix_map.size)
    ip = <bytes>s.fpaths[1]
    tp = <bytes>s.fpaths[2]
    with nogil:
        if iw:
            err = tl_grow_path(ip, INDEX_HEADER_SIZE + s.idx_slots * 4, iw)
        if tw and not err:
            err = tl_grow_path(tp, INDEX_HEADER_SIZE + s.tix_slots * 8, tw)
    if err:
        return err
    if iw:
        s.idx_slots = (iw - INDEX_HEADER_SIZE) // 4
    if tw:
        s.tix_slots = (tw - INDEX_HEADER_SIZE) // 8
    return 0


cdef inline size_t writer_limit(Segment s, size_t wpos) noexcept:
    """How far the writer may store: what is allocated, less PREALLOC_SLACK (so a reader that
    looks at the length word after the last frame reads an allocated block: on a full tmpfs a
    read of a hole faults), all of it once the file is allocated to its capacity. Never below
    wpos (a writer that could not allocate asks again at its next append)."""
    cdef size_t lim
    if s.alloc >= s.ncap:
        lim = s.cap
    elif s.alloc > PREALLOC_SLACK:
        lim = min((s.alloc - PREALLOC_SLACK) & ~(<size_t>7), s.cap)
    else:
        lim = 0
    return max(lim, wpos)


cdef inline size_t grow_mark(Segment s, size_t hard, size_t floor) noexcept:
    """Where the writer asks for the next step: half a step, at most GROW_AHEAD, before
    `hard`, its storing limit; `hard` itself once the file is allocated to its capacity. Never
    below `floor` (where the writer will be once the frames being placed are written: the
    appenders compute room as _wcap - _wpos, unsigned) nor above `hard`."""
    cdef size_t ahead
    if s.alloc >= s.ncap:
        return hard
    ahead = min(s.alloc // 2, <size_t>GROW_AHEAD) & ~(<size_t>7)
    if hard <= ahead:
        return min(floor, hard)
    return min(max(hard - ahead, floor), hard)


cdef inline void set_limits(LogCore log, Segment s, size_t floor) noexcept:
    """_whard and _wcap for the active segment s, the writer about to be at `floor`."""
    log._whard = writer_limit(s, floor)
    log._wcap = grow_mark(s, log._whard, floor)


cdef int prealloc_new_file(int fd, int64_t capacity) except -1:
    """A new segment file: its first step allocated, its size the capacity (the rest holes,
    allocated as the writer advances). 0, or an errno value (nothing is allocated then)."""
    cdef int64_t first = prealloc_first(capacity) if TL_PREALLOC_STEPS else capacity
    cdef int rc = tl_preallocate(fd, first)
    if rc == 0 and first < capacity:
        try:
            os.ftruncate(fd, capacity)
        except OSError as e:
            rc = e.errno or _errno.EIO
    return rc


cdef int prealloc_activate(LogCore log, Segment s, size_t pos) except -1:
    """s becomes the writer's segment with its data ending at pos (offset log._next): its file
    at full size, allocated at least to pos and a slack (else the next append asks again), the
    writer's limit set, and its index files holding an entry for every record that fits below
    that limit. If they cannot grow (a full disk), the segment goes on without an index (a
    hint: readers then walk)."""
    cdef size_t want
    cdef int err = 0
    cdef int fd = s.fd
    if fd >= 0 and s.cap < (s.ncap & ~(<size_t>7)):
        try:                            # a file shorter than its capacity: give it its size
            os.ftruncate(fd, s.ncap)
            s.cap = s.ncap & ~(<size_t>7)
        except OSError:
            pass
    want = min((pos + PREALLOC_SLACK + PREALLOC_ALIGN - 1) // PREALLOC_ALIGN * PREALLOC_ALIGN,
               s.ncap)
    if fd >= 0 and want > s.alloc:
        with nogil:
            err = tl_grow_file(fd, s.alloc, want)
        if not err:
            s.alloc = want
    set_limits(log, s, pos)
    if s.idx == NULL:
        return 0
    if index_cover_err(s, (log._next - s.base) +
                       <int64_t>((log._whard - pos) // FRAME_HEADER_SIZE)):
        s.idx = NULL
        s.tix = NULL
        s.idx_map = None
        s.tix_map = None
    return 0


cdef bint grow_active(LogCore log, size_t need) except -1:
    """`need` bytes of frames pass the writer's mark (_wcap) in the active segment: allocate a
    step further (index files first) when they fit in its capacity. True when they now fit;
    False when a roll is needed. When the disk refuses: if they fit below what is allocated
    (_whard: the mark is early), True, the mark moved up to _whard (asked again there);
    else LogFullError (ENOSPC) or OSError, with nothing written."""
    cdef Segment s = log._active
    cdef size_t end = log._wpos + need, cur, target, step
    cdef int err = 0
    cdef int fd
    cdef bint early
    if s is None or s.fd < 0 or end > (s.ncap & ~(<size_t>7)):
        return False
    early = end <= log._whard
    cur = s.alloc
    step = min(max(cur, <size_t>PREALLOC_FIRST), <size_t>PREALLOC_MAX_STEP)
    target = max(end + PREALLOC_SLACK, cur + step)
    target = min((target + PREALLOC_ALIGN - 1) // PREALLOC_ALIGN * PREALLOC_ALIGN, s.ncap)
    err = index_cover_err(s, (log._next - s.base) +
                          <int64_t>((target - log._wpos) // FRAME_HEADER_SIZE))
    if not err:
        fd = s.fd
        with nogil:
            err = tl_grow_file(fd, cur, target)
        if err:
            path = s.path
        else:
            s.alloc = target
    else:
        path = s.path[:len(s.path) - 4] + ".idx"
    if err:
        if early:                       # room left below _whard: go on, ask again there
            log._wcap = log._whard
            return True
        raise_oserror(err, path)
    if target > s.cap:                  # (a file shorter than its capacity grows in size)
        s.cap = min(target, s.ncap) & ~(<size_t>7)
    set_limits(log, s, end)
    if log._tt != NULL:
        tl_toucher_extend(log._tt, log._w, log._whard)
    return True


cdef int fit_after_roll(LogCore log, size_t need) except -1:
    """A roll made a new segment (PREALLOC_FIRST bytes allocated): allocate it as far as the
    `need` bytes that rolled need (LogFullError when the disk refuses: nothing is written)."""
    if need > log._wcap - log._wpos and not grow_active(log, need):
        raise ValueError(f"{need} bytes of frames do not fit in a segment of "
                         f"{log._active.ncap} bytes")
    return 0
