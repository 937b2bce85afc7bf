# Random reads and time lookup: read (the record at an offset, through seg_for) and
# find_time (offset_for_time: the first record at or after a timestamp), with the .tix running
# maxima taken only when they check out against verified frames (tix_in_order, tix_first_at),
# else a scan (seg_scan_time, scan_window); seg_holds_newer answers retention by time. Frames
# (format v2) hold many records: scans step a frame at a time and read each record's timestamp
# from its column, skipping frames whose header timestamp (their verified maximum) is too old.
# Writes no LogCore field (Segment.tix_sorted only: entries found in order, read once).
# Lets other threads run: mapping a segment (seg_for); re-checks _check_open() after.


cdef int frames_max_ts(const char* data, size_t cap, size_t* pos, int64_t* off, int64_t end,
                       int64_t* newest) noexcept nogil:
    """Verify the frames from *pos (the one beginning with offset *off) up to offset `end`
    (FORMAT.md rules 1-5, CRC included) and raise *newest to the newest timestamp among them:
    each frame's header timestamp, which rule 5 makes its records' maximum. FRAME_OK, or the
    problem of the frame at *pos / *off."""
    cdef FrameLayout L
    cdef int rc
    while off[0] < end:
        if pos[0] + FRAME_HEADER_SIZE > cap:
            return FRAME_END
        rc = frame_verify(data + pos[0], cap - pos[0], &L)
        if rc != FRAME_OK:
            return rc
        if L.base != off[0]:
            return FRAME_BAD_OFFSET
        if L.ts > newest[0]:
            newest[0] = L.ts
        pos[0] += align8(L.length)
        off[0] += L.count
    return FRAME_OK


cdef inline int64_t rec_ts(const char* f, const FrameLayout* L, int64_t i) noexcept:
    """Timestamp of record i of the verified frame f."""
    return rd_i64(f + L.c_ts + 8 * i) if L.c_ts else L.ts


cdef inline int next_frame(Segment seg, size_t* pos, int64_t off, FrameLayout* L) except -128:
    """Step from the verified frame at *pos (layout L) to the next one, which must begin
    with offset `off`: its check result (L then describes it)."""
    cdef int rc
    pos[0] += align8(L.length)
    rc = seg.frame_at(pos[0], off, L)
    if rc == FRAME_OK and L.base != off:
        rc = FRAME_BAD_OFFSET
    return rc


cdef bint seg_holds_newer(Segment seg, int64_t next_base, int64_t cutoff) except -1:
    """Whether the sealed segment [seg.base, next_base) holds a record with timestamp >= cutoff
    (retention by time keeps it then). Decided from verified frames only, never from the
    time index: its pages are not synced, and after a power loss its entries read 0, which
    would make recent records look old. The last frame answers when its newest record (its
    header timestamp, checked against its records by rule 5) is that new (timestamps mostly
    grow); otherwise every frame is read, once: the newest timestamp is kept in seg.newest_ts
    (which a writer also knows for the segments it filled from empty). A mapping made here is
    released."""
    cdef bint was_mapped = seg.data != NULL
    cdef Py_ssize_t p
    cdef size_t pos = SEGMENT_HEADER_SIZE
    cdef int64_t off = seg.base, newest = INT64_MIN
    cdef FrameLayout L
    cdef int rc
    cdef const char* data
    cdef size_t cap
    if seg.newest_ts != TS_UNKNOWN:
        return seg.newest_ts >= cutoff
    if next_base <= seg.base:
        return False
    try:
        p = seg.locate(next_base - 1, &L, &rc)
        if rc != FRAME_OK:
            raise corrupt(seg.path, p, next_base - 1, rc)
        if L.ts >= cutoff:
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
    """First offset in [first, last) of `seg` whose timestamp >= ts, or -1. Verifies each
    frame; skips a frame whose newest record (its header timestamp) is older than ts."""
    cdef int64_t off = first, hi, o
    cdef FrameLayout L
    cdef size_t pos
    cdef const char* f
    cdef int rc
    cdef ZFrame z
    if first >= last:
        return -1
    pos = seg.locate(first, &L, &rc)
    while True:
        if rc != FRAME_OK:
            raise corrupt(seg.path, pos, off, rc)
        hi = min(last, L.base + <int64_t>L.count)
        if L.ts >= ts:
            if L.attrs & ATTR_CODEC:        # compressed: the inflated frame's column
                z = seg_inflate(seg, pos, &L)
                for o in range(off, hi):
                    if rec_ts(z.f, &z.L, o - L.base) >= ts:
                        return o
            f = seg.data + pos
            for o in range(off, hi):
                if rec_ts(f, &L, o - L.base) >= ts:
                    return o
        off = hi
        if off >= last:
            return -1
        rc = next_frame(seg, &pos, off, &L)


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
                     int64_t* newest, int64_t* found) except -128:
    """Read records [a, b) of seg from verified frames: raise *newest to their newest
    timestamp and set *found (when < 0) to the first whose timestamp >= ts; with stop, return
    as soon as one is found. A frame wholly inside the window that cannot hold the answer
    counts by its header timestamp (its records' maximum, rule 5). FRAME_OK, or the problem
    of a frame (the caller falls back to a scan)."""
    cdef size_t pos
    cdef FrameLayout L
    cdef int rc
    cdef int64_t off = a, t, hi, o
    cdef const char* f
    cdef FrameLayout* Lp
    cdef ZFrame z
    if a >= b:
        return FRAME_OK
    pos = seg.locate(a, &L, &rc)
    while True:
        if rc != FRAME_OK:
            return rc
        hi = min(b, L.base + <int64_t>L.count)
        if off == L.base and hi == L.base + <int64_t>L.count and (found[0] >= 0 or L.ts < ts):
            if L.ts > newest[0]:
                newest[0] = L.ts
        else:
            f = seg.data + pos
            Lp = &L
            if L.attrs & ATTR_CODEC:        # compressed: the inflated frame's column
                z = seg_inflate(seg, pos, &L)
                f = z.f
                Lp = &z.L
            for o in range(off, hi):
                t = rec_ts(f, Lp, o - L.base)
                if t >= ts and found[0] < 0:
                    found[0] = o
                    if stop:
                        return FRAME_OK
                if t > newest[0]:
                    newest[0] = t
        off = hi
        if off >= b:
            return FRAME_OK
        rc = next_frame(seg, &pos, off, &L)


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


cdef object read_one(LogCore self, offset):
    cdef int64_t off, at, end
    cdef Segment seg
    cdef Py_ssize_t pos
    cdef FrameLayout L
    cdef int rc
    cdef uint32_t flen
    cdef int32_t fk
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
        seg = seg_for(self, off)
        pos = seg.find(off, &at)            # (mapping it lets threads run)
        if at == off and single_at(seg.data, seg.cap, pos, off, &flen, &fk):
            self._check_open()
            return single_record(seg, pos, off, flen, fk)     # a single append's frame
        pos = seg.locate(off, &L, &rc)
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
        load_segments(self)
        seg = seg_for(self, off)
        pos = seg.locate(off, &L, &rc)
        self._check_open()
    if rc != FRAME_OK:
        raise corrupt(seg.path, pos, off, rc)
    return make_record_at(seg, pos, &L, <uint32_t>(off - L.base))


cdef object find_time(LogCore self, timestamp):
    cdef int64_t ts = to_timestamp(timestamp, "timestamp")
    cdef int64_t end, off, last, r
    cdef Segment seg
    self._check_open()
    end = self._end_now()
    off = self._start_now()
    while off < end:
        seg = seg_for(self, off)
        last = end if seg.next_base < 0 or seg.next_base > end else seg.next_base
        r = seg_first_at(seg, max(off, seg.base), last, ts)
        if r >= 0:
            return r
        if seg.next_base < 0 or seg.next_base <= off:
            break
        off = seg.next_base
    return end
