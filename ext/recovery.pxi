# Recovery at open and the operator tools, as functions over a LogCore's segment set:
# open_writer (checks, torn-tail cut, index catch-up, the active segment to write on), recover
# (scan from the durable checkpoint, cut at the first damage or refuse), clean_tail / zero_tail,
# resume_index / rebuild_index, and the tools behind `tidelog verify|repair`: index_problems,
# rebuild_indexes, salvage.
# Writes (at open only, before any other thread can see the LogCore): _base, _next, _durable,
# _start, _max_ts, _idx, _tix, _idx_stride, _segments/_nbases (dropping a damaged tail), repaired.
# The tools run on a writer that holds the lock, or on a read-only LogCore (they write nothing).


cdef int64_t index_frame_entries(Segment s, size_t pos, const FrameLayout* L, int64_t maxts,
                                 bint write, Py_ssize_t* bad) noexcept:
    """The index entries the frame at pos (layout L, checked by frame_layout) describes
    (FORMAT.md §3): .idx slots of every record it holds = pos, .tix slots = the running max of
    timestamps from maxts. Writes them (write) or counts those that differ into bad. Returns
    the running max after the frame."""
    cdef const char* f = s.data + pos
    cdef uint64_t rel0 = <uint64_t>(L.base - s.base), st = s.idx_stride, r, i
    cdef uint64_t end = rel0 + L.count
    cdef int64_t ts
    if not L.c_ts:                       # one timestamp for all: only the slots matter
        if L.ts > maxts:
            maxts = L.ts
        r = (rel0 + st - 1) & ~(st - 1)
        while r < end:
            index_slot(s, r, pos, maxts, write, bad)
            r += st
        return maxts
    for i in range(L.count):
        ts = rd_i64(f + L.c_ts + 8 * i)
        if ts > maxts:
            maxts = ts
        r = rel0 + i
        if (r & (st - 1)) == 0:
            index_slot(s, r, pos, maxts, write, bad)
    return maxts


cdef inline void index_slot(Segment s, uint64_t r, size_t pos, int64_t maxts, bint write,
                            Py_ssize_t* bad) noexcept:
    """The entries of relative record r (a multiple of the .idx stride)."""
    cdef uint64_t j = r // s.idx_stride
    if write:
        if j < s.idx_slots:
            wr_u32(s.idx + j * 4, <uint32_t>pos)
        if (r & (TIX_STRIDE - 1)) == 0 and r // TIX_STRIDE < s.tix_slots:
            wr_i64(s.tix + (r // TIX_STRIDE) * 8, maxts)
        return
    if j >= s.idx_slots or rd_u32(s.idx + j * 4) != pos:
        bad[0] += 1
    if (r & (TIX_STRIDE - 1)) == 0 and (r // TIX_STRIDE >= s.tix_slots or
                                        rd_i64(s.tix + (r // TIX_STRIDE) * 8) != maxts):
        bad[0] += 1


cdef Py_ssize_t index_mismatches(Segment s, int64_t log_end) except -1:
    """Index entries of s that are missing or disagree with its frames (hints that would cost a
    scan), counting a missing index as one."""
    cdef size_t pos = SEGMENT_HEADER_SIZE
    cdef int64_t off, end
    cdef int64_t maxts = -(1 << 62)
    cdef Py_ssize_t bad = 0
    cdef FrameLayout L
    s.ensure()
    if s.idx == NULL:
        return 1
    off = s.base
    end = s.next_base if s.next_base >= 0 else log_end
    # (rule 8 bounds the walk: a forged count would cost a slot per claimed record)
    while (off < end and pos + FRAME_HEADER_SIZE <= s.cap and
           frame_layout(s.data + pos, s.cap - pos, &L) == FRAME_OK and L.base == off
           and not past_rmax(s.base, s.ncap, L.base, L.count)):
        maxts = index_frame_entries(s, pos, &L, maxts, False, &bad)
        pos += align8(L.length)
        off += L.count
    return bad


cdef rebuild_index(Segment s):
    """Fill the (fresh, zeroed) index files of a writable segment from its frames."""
    cdef size_t pos = SEGMENT_HEADER_SIZE
    cdef int64_t off = s.base, maxts = -(1 << 62)
    cdef Py_ssize_t bad = 0
    cdef FrameLayout L
    while (pos + FRAME_HEADER_SIZE <= s.cap and
           frame_layout(s.data + pos, s.cap - pos, &L) == FRAME_OK and L.base == off
           and not past_rmax(s.base, s.ncap, L.base, L.count)):
        pos += align8(L.length)
        off += L.count
    index_cover_err(s, off - s.base)       # (prealloc.pxi) entries for them all, if it can
    pos = SEGMENT_HEADER_SIZE
    off = s.base
    while (pos + FRAME_HEADER_SIZE <= s.cap and
           frame_layout(s.data + pos, s.cap - pos, &L) == FRAME_OK and L.base == off
           and not past_rmax(s.base, s.ncap, L.base, L.count)):
        maxts = index_frame_entries(s, pos, &L, maxts, True, &bad)
        pos += align8(L.length)
        off += L.count
    msync(s.idx_map.addr, s.idx_map.size, MS_SYNC)
    msync(s.tix_map.addr, s.tix_map.size, MS_SYNC)


cdef zero_tail(Segment s, size_t pos):
    """Zero a segment from pos to its end, so that no stale frame can follow the next append:
    fallocate(FALLOC_FL_ZERO_RANGE) where the system has it (the blocks stay allocated), else
    by clearing through the mapping whatever is not zero."""
    cdef size_t chunk = 65536, a = pos, b
    cdef size_t end = min(s.cap, s.alloc)      # prealloc.pxi: the allocated prefix
    cdef int err
    # past the allocated prefix (its first hole): holes, but maybe old frames after one (a
    # punched file; a power loss that kept later blocks but not earlier ones): those are
    # cleared too, never through the mapping (a hole there may fault), else they would follow
    # the next appends as if written
    err = tl_clear_extents(s.fd, max(pos, end), s.cap) if s.fd >= 0 else 0
    if err:
        raise_oserror(err, s.path)
    if pos >= end:
        return
    if tl_zero_range(s.fd, pos, end - pos) == 0:
        return
    while a < end:
        b = min(end, (a // chunk + 1) * chunk)
        if not all_zero(s.data + a, b - a):
            memset(s.data + a, 0, b - a)
        a = b


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


cdef open_writer(LogCore self):
    cdef char* ctl = self._ctl
    cdef bint clean = (rd_u32(ctl + CTL_FLAGS) & CTL_FLAG_CLEAN) != 0
    cdef int64_t c_end = ctl_get(ctl, CTL_END), c_durable = ctl_get(ctl, CTL_DURABLE)
    cdef int64_t c_start = ctl_get(ctl, CTL_START)
    cdef Segment act
    list_bases(self, True)
    load_segments(self)
    k = 0
    bases = [(<Segment>x).base for x in self._segments]
    if c_start in bases and c_start <= c_durable <= c_end:      # (a plausible checkpoint)
        k = bases.index(c_start)
    if k:       # a retention stopped midway: its new start is persisted, delete the rest
        unlink_segment_files(self._segments[:k])
        os.fsync(self._dir_fd)
        self._segments = []
        self._nbases = 0
        load_segments(self)
    check_headers(self, clean and self._repair is None,
                        -1 if self._repair is not None else c_durable)
    if not self._segments:
        if c_end != c_start and (clean or c_durable > c_start):
            raise CorruptLogError(f"{self.path}: every segment is missing but the control "
                                  f"file records offsets {c_start}..{c_end}",
                                  path=self.path, position=None, offset=c_start)
        seg = create_segment(self, c_start, self._seg_bytes)
        self._segments.append(seg)
        push_base(self, c_start)
        self._start = c_start
        self._next = c_start
        set_active(self, seg, SEGMENT_HEADER_SIZE)
        resume_index(self, seg, SEGMENT_HEADER_SIZE, c_start, True)
        sync_after_recovery(self, 0)
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
            check_chain(self, len(self._segments) - 1)
            act.writable = True
            act.ensure()
            pos = clean_tail(self, act, c_end, ctl_get(ctl, CTL_ACTIVE_POS))
        if pos is not None:
            self._next = c_end
            set_active(self, act, pos)
            resume_index(self, act, pos, c_end, act.index_fresh)
        else:
            first = recover(self, c_durable)
            sync_after_recovery(self, first)
    if self._base > MAX_BASE_OFFSET or self._next > MAX_BASE_OFFSET:
        # (forged: a segment named, or a control page saying, an offset near 2**63; its
        # appends would wrap to negative offsets, which name no segment file)
        raise CorruptLogError(f"{self.path}: offset {self._next} of segment {self._base} is "
                              f"beyond the largest a log may reach ({MAX_BASE_OFFSET})",
                              path=self.path, position=None, offset=self._next)
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


cdef Py_ssize_t frame_at(Segment s, int64_t offset, FrameLayout* L) noexcept:
    """Position of the frame of s holding `offset` (L: its layout, rules 1-3), by its .idx
    entry (usable when the frame there holds the entry's record: FORMAT.md §3) and a short
    walk, else by a walk from the segment start; -1 when the data ends first. No CRC."""
    cdef size_t pos = SEGMENT_HEADER_SIZE, p
    cdef int64_t rel = offset - s.base, j, slot
    cdef uint32_t st = <uint32_t>s.idx_stride
    if rel < 0:
        return -1
    if s.idx != NULL:
        j = rel // st
        if <size_t>j < s.idx_slots:
            p = rd_u32(s.idx + j * 4)
            slot = s.base + j * st
            if (p >= SEGMENT_HEADER_SIZE and not (p & 7) and p + FRAME_HEADER_SIZE <= s.cap
                    and frame_layout(s.data + p, s.cap - p, L) == FRAME_OK
                    and L.base <= slot < L.base + <int64_t>L.count):
                pos = p
    while pos + FRAME_HEADER_SIZE <= s.cap:
        if frame_layout(s.data + pos, s.cap - pos, L) != FRAME_OK:
            return -1
        if offset < L.base + <int64_t>L.count:
            return <Py_ssize_t>pos if offset >= L.base else -1
        pos += align8(L.length)
    return -1


cdef inline int64_t record_ts(const char* f, const FrameLayout* L, uint32_t i) noexcept:
    return rd_i64(f + L.c_ts + 8 * <size_t>i) if L.c_ts else L.ts


cdef object clean_tail(LogCore self, Segment s, int64_t end, int64_t pos):
    """After a clean close: check in O(1) that `end` and `pos` describe the segment's end.
    Returns pos, or None when they do not (then the segment is scanned)."""
    cdef uint32_t length
    cdef Py_ssize_t p
    cdef FrameLayout L
    # (rule 8 on `end` first, as the start of a frame of no records: a control page claiming
    # more than R is refused without looking for its last frame)
    if (end < s.base or past_rmax(s.base, s.ncap, end, 0) or pos < SEGMENT_HEADER_SIZE
            or pos > <int64_t>s.cap or (pos & 7)):
        return None
    if pos + FRAME_HEADER_SIZE <= <int64_t>s.cap and rd_u32(s.data + pos) != 0:
        return None
    if end == s.base:
        return pos if pos == SEGMENT_HEADER_SIZE else None
    p = frame_at(s, end - 1, &L)
    # rule 8 on the last frame too: it ends at `end`, but its base may lie below the segment's
    # (then its count alone is held to R); checked before the sum, which it keeps from wrapping
    if p < 0 or past_rmax(s.base, s.ncap, L.base, L.count) or L.base + <int64_t>L.count != end:
        return None
    if frame_check(s.data, s.cap, p, L.base, &length) != FRAME_OK:
        return None
    if p + <int64_t>align8(length) != pos:
        return None
    return pos


cdef Py_ssize_t recover(LogCore self, int64_t durable) except -1:
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
    check_chain(self, first)
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
        pos, off, bad = scan_frames(self, s, pos, off, nxt.base if nxt is not None else -1)
        if bad is not None or nxt is None:
            break
        if off != nxt.base:
            # this segment's data ends before the next one begins: its tail was lost
            bad = (s.path, pos, off, FRAME_END)
            break
        i += 1
        touch_segment(self, s)              # sealed: scanned (a repair scans them all)
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
        drop_segments(self, i + 1)
    s.writable = True
    s.ensure()                      # mapped again writable, with a descriptor kept
    zero_tail(s, pos)
    self._next = off
    set_active(self, s, pos)
    resume_index(self, s, pos, off, True)
    return first


cdef tuple scan_frames(LogCore self, Segment s, size_t pos, int64_t off, int64_t limit):
    """Follow valid frames from pos (offset off) up to offset `limit` (the next segment's
    base; -1: none; what a sealed segment holds after it is ignored); a group (frames chained
    by MORE, FORMAT.md rule 7) counts only whole. Returns (position, offset) where the valid
    data ends and None, or the damage found there as (path, position, offset, problem) when it
    is not a clean end."""
    cdef size_t bpos
    cdef int64_t boff
    cdef uint32_t length
    cdef int rc
    while True:
        if off == limit:
            return pos, off, None
        rc = frame_check(s.data, s.cap, pos, off, &length)
        if rc == FRAME_OK and self._repair is not None:
            rc = inner_check(s, pos)
        if rc == FRAME_END:
            return pos, off, None
        if rc == FRAME_OK and past_rmax(s.base, s.ncap, off, frame_count(s.data + pos)):
            rc = FRAME_BAD_COUNT            # rule 8 (a forged count under a valid CRC)
        if rc != FRAME_OK:
            return pos, off, (s.path, pos, off, rc)
        bpos = pos
        boff = off
        while rd_u16(s.data + bpos + 28) & ATTR_MORE:
            boff += frame_count(s.data + bpos)
            bpos += align8(length)
            rc = frame_check(s.data, s.cap, bpos, boff, &length)
            if rc == FRAME_OK and self._repair is not None:
                rc = inner_check(s, bpos)
            if rc == FRAME_OK and past_rmax(s.base, s.ncap, boff, frame_count(s.data + bpos)):
                rc = FRAME_BAD_COUNT
            if rc != FRAME_OK:
                return pos, off, (s.path, bpos, boff, FRAME_BAD_GROUP if rc == FRAME_END else rc)
        pos = bpos + align8(length)
        off = boff + frame_count(s.data + bpos)


cdef int inner_check(Segment s, size_t pos) except -128:
    """For a repair (which must cut where verify finds damage): a compressed frame at pos that
    passed frame_check also inflates to a valid frame agreeing with its header (compression.pxi:
    seg_inflate); FRAME_BAD_CODEC when it does not. MissingCodecError when its codec's package
    is missing (a repair cannot tell then). Plain frames: FRAME_OK."""
    cdef FrameLayout L
    if not (rd_u16(s.data + pos + 28) & ATTR_CODEC):
        return FRAME_OK
    if frame_layout(s.data + pos, s.cap - pos, &L) != FRAME_OK:
        return FRAME_BAD_LAYOUT
    try:
        seg_inflate(s, pos, &L)
    except CorruptLogError:
        return FRAME_BAD_CODEC
    return FRAME_OK


cdef sync_after_recovery(LogCore self, Py_ssize_t first):
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


cdef resume_index(LogCore self, Segment s, size_t end_pos, int64_t end, bint rebuild):
    """Make segment s (data ending at end_pos, offset end) the writer's index target:
    check that its index describes exactly the data, else rebuild it from the frames."""
    cdef size_t pos
    cdef Py_ssize_t p
    cdef int64_t last, j, m = 0, off = 0
    cdef uint32_t i
    cdef int err
    cdef FrameLayout L
    cdef const char* f
    self._max_ts = -(1 << 62)
    if s.idx == NULL:
        return
    last = end - 1 - s.base                      # relative offset of the last record
    if not rebuild:
        if last < 0:
            rebuild = tl_load_u32_acquire(s.idx) != 0
        else:
            j = last // <int64_t>s.idx_stride
            p = frame_at(s, end - 1, &L)
            rebuild = (p < 0 or <size_t>j >= s.idx_slots or
                       tl_load_u32_acquire(s.idx + j * 4) != <uint32_t>p or
                       (<size_t>j + 1 < s.idx_slots and
                        tl_load_u32_acquire(s.idx + (j + 1) * 4) != 0))
        if not rebuild and last >= 0:
            # running max timestamp: the last .tix entry, then the records after it. The
            # entry seeds the entries to come, so it must look right: not 0 (not written),
            # not below the one before it or its own record's timestamp, none after it
            j = last // TIX_STRIDE
            off = s.base + j * TIX_STRIDE
            m = rd_i64(s.tix + j * 8) if <size_t>j < s.tix_slots else 0
            p = frame_at(s, off, &L)
            rebuild = (p < 0 or m == 0
                       or m < record_ts(s.data + p, &L, <uint32_t>(off - L.base))
                       or (j > 0 and m < rd_i64(s.tix + (j - 1) * 8))
                       or (<size_t>j + 1 < s.tix_slots and rd_i64(s.tix + (j + 1) * 8) != 0))
        if not rebuild and last >= 0:
            # (the records from `off` to `end` only, along the chain of offsets: after a clean
            # close only the last frame was checked, and a frame before it may claim 2**32 - 1
            # records of empty values - a walk of each claimed record took minutes per frame)
            self._max_ts = m
            pos = <size_t>p
            i = <uint32_t>(off - L.base)
            while True:
                f = s.data + pos
                while i < L.count and off < end:
                    self._max_ts = max(self._max_ts, record_ts(f, &L, i))
                    i += 1
                    off += 1
                pos += align8(L.length)
                if (off >= end or pos >= end_pos
                        or frame_layout(s.data + pos, s.cap - pos, &L) != FRAME_OK
                        or L.base != off):
                    break
                i = 0
            return
    # index_note writes without bounds checks: the index files are grown to hold entries for
    # every record up to `end` first (they may be smaller: damaged, replaced), and the walk
    # follows the chain of offsets (after a clean close only the last frame was checked),
    # never notes past `end` and stops where a frame's records would not fit the index (a
    # count past R: recover cuts such a frame, clean_tail refuses it; this is the last guard)
    err = index_cover_err(s, min(end - s.base, seg_rmax(s.ncap)))
    if err:
        raise_oserror(err, s.path[:len(s.path) - 4] + ".idx")
    memset(s.idx, 0, s.idx_slots * 4)
    memset(s.tix, 0, s.tix_slots * 8)
    pos = SEGMENT_HEADER_SIZE
    self._idx = s.idx
    self._idx_stride = s.idx_stride
    self._tix = s.tix
    self._base = s.base
    off = s.base
    while (pos < end_pos and frame_layout(s.data + pos, s.cap - pos, &L) == FRAME_OK
           and L.base == off and off + <int64_t>L.count <= end
           and <uint64_t>(off + L.count - 1 - s.base) // s.idx_stride < s.idx_slots
           and <uint64_t>(off + L.count - 1 - s.base) // TIX_STRIDE < s.tix_slots):
        f = s.data + pos
        for i in range(L.count):
            index_note(self, pos, off + i, record_ts(f, &L, i))
        pos += align8(L.length)
        off += L.count
    s.index_fresh = False


cdef object index_problems(LogCore self):
    out = []
    self._check_open()
    if self._readonly:
        load_segments(self)
    for seg in self._segments:
        touch_segment(self, seg)
        self._check_open()          # (the last segment's mapping let threads run)
        bad = index_mismatches(seg, self._end_now())
        if bad:
            out.append(((<Segment>seg).path[:len((<Segment>seg).path) - 4] + ".idx", bad))
    return out


cdef object rebuild_indexes(LogCore self):
    cdef Segment seg, fresh
    if self._readonly:
        raise TidelogError("rebuilding indexes needs the writer")
    n = 0
    for i in range(len(self._segments) - 1):
        seg = self._segments[i]
        touch_segment(self, seg)
        if not index_mismatches(seg, self._next):
            continue
        fresh = new_segment_obj(self, seg.base, True)
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
        touch_segment(self, fresh)
        n += 1
    return n


def salvage(LogCore self):
    cdef Segment seg
    cdef size_t pos
    cdef uint32_t length
    cdef int64_t last = -1, off, dstart = 0, dend = 0, nb
    cdef size_t lim, ncap
    cdef int rc, fd
    cdef uint32_t k
    cdef Py_ssize_t i
    cdef FrameLayout L
    self._check_open()
    if self._readonly:
        load_segments(self)
    known = list(self._segments)
    for i in range(len(known)):
        seg = new_segment_obj(self, (<Segment>known[i]).base, False)
        # rule 8 (no overlaps): its records lie below the next segment's base. A forged frame
        # reaching past it would take the next segment's offsets, whose records were then
        # skipped as already yielded
        nb = (<Segment>known[i + 1]).base if i + 1 < len(known) else -1
        seg.any_header = True
        try:
            seg.ensure()
        except (CorruptLogError, OSError):
            continue                                  # a missing or unreadable segment
        # only the allocated runs of the file are read (prealloc.pxi: a segment is mostly holes
        # past its writer's last step; reading a hole through the mapping takes a page, and is
        # a SIGBUS on a full tmpfs); a frame never runs past the end of its run
        try:
            fd = os.open(seg.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            # rule 8 holds frames to the R records of the capacity the header states, so a
            # forged count cannot make billions of records out of a few bytes. A damaged
            # header states none: the file's size (seg.ncap, mapped with any_header) is its
            # capacity (a writer makes it at its capacity, FORMAT.md §2) unless it was cut or
            # an older build's; the largest capacity a segment may have let one forged frame
            # of empty values yield up to about 2**29 records
            try:
                h = os.pread(fd, SEGMENT_HEADER_SIZE, 0)
                check_segment_header(h, seg.base, seg.path)
                ncap = nominal_capacity(h, seg.ncap, seg.base, seg.path)
            except TidelogError:
                ncap = seg.ncap
            pos = SEGMENT_HEADER_SIZE
            while tl_next_data(fd, pos, seg.cap, &dstart, &dend):
                if <size_t>dstart > pos:
                    pos = align8(<size_t>dstart)
                lim = <size_t>dend & ~(<size_t>7)
                while pos + FRAME_HEADER_SIZE <= lim:
                    rc = frame_verify(seg.data + pos, lim - pos, &L)
                    # (past_rmax first: it keeps the sums below from wrapping)
                    if (rc == FRAME_OK and not past_rmax(seg.base, ncap, L.base, L.count)
                            and L.base + <int64_t>L.count - 1 > last
                            and (nb < 0 or L.base + <int64_t>L.count <= nb)):
                        # every record of a valid frame (rules 1-5 and 8), none already yielded
                        k = 0 if L.base > last else <uint32_t>(last + 1 - L.base)
                        while k < L.count:
                            r = salvage_record(seg, pos, &L, k)
                            if r is not None:
                                yield r
                            if seg.data == NULL:
                                seg.ensure()    # unmapped meanwhile: the positions still hold
                            k += 1
                        last = L.base + L.count - 1
                        pos += align8(L.length)
                    else:
                        pos += FRAME_ALIGN
                pos = max(pos, lim)
                if pos >= seg.cap:
                    break
        finally:
            os.close(fd)
        seg.unmap()


cdef object salvage_record(Segment seg, size_t pos, FrameLayout* L, uint32_t i):
    """Record i of the verified frame at pos, as salvage hands it out (None: a compressed
    frame that does not inflate to a valid frame, lost like any damaged frame)."""
    if L.attrs & ATTR_CODEC:
        try:
            seg_inflate(seg, pos, L)
        except CorruptLogError:
            return None
    return make_record_at(seg, pos, L, i)
