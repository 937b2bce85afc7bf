# The segment set: the sorted list of segments (_segments, _bases/_nbases), lookup by offset
# (seg_for), the mapping LRU of sealed segments (touch_segment: at most _max_mapped stay mapped),
# a reader's refresh of the list when the writer rolled or retention dropped (load_segments, at a
# new _gen), header and chain checks of the files (check_header(s), check_chain), and the files'
# removal (unlink_segment_files).
# Writes: _segments, _bases, _nbases, _bases_cap, _gen, _lru (through touch_segment), _dir_dirty.
# Lets other threads run: listing the directory and opening files (os calls) in load_segments and
# seg_for; each re-checks _check_open() after them.


cdef void* realloc_bases(int64_t* p, Py_ssize_t n) except NULL:
    cdef void* q = realloc(p, n * sizeof(int64_t))
    if q == NULL:
        raise MemoryError()
    return q


cdef unlink_segment_files(list segs):
    for seg in segs:
        stem = (<Segment>seg).path[:len((<Segment>seg).path) - 4]
        for ext in (".seg", ".idx", ".tix"):
            try:
                os.unlink(stem + ext)
            except FileNotFoundError:
                pass


cdef list list_bases(LogCore self, bint cleanup):
    bases = []
    for name in os.listdir(self.path):
        m = SEGMENT_RE.match(name)
        if m:
            b = int(m.group(1))
            if b > INT64_MAX:       # (20 digits reach past it: no offset is that large)
                raise CorruptLogError(f"{os.path.join(self.path, name)}: segment name beyond "
                                      f"the largest offset {INT64_MAX}",
                                      path=os.path.join(self.path, name), position=None,
                                      offset=None)
            bases.append(b)
        elif cleanup and name.endswith(".seg.tmp"):
            os.unlink(os.path.join(self.path, name))

    bases.sort()
    return bases


cdef Segment new_segment_obj(LogCore self, int64_t base, bint writable):
    cdef Segment s = Segment.__new__(Segment)
    s.base = base
    s.path = os.path.join(self.path, segment_name(base))
    s.writable = writable
    return s


cdef push_base(LogCore self, int64_t base):
    if self._nbases == self._bases_cap:
        newcap = max(16, self._bases_cap * 2)
        p = <int64_t*>realloc_bases(self._bases, newcap)
        self._bases = p
        self._bases_cap = newcap
    self._bases[self._nbases] = base
    self._nbases += 1


cdef load_segments(LogCore self):
    """(Re)build the segment list from the directory; keeps Segment objects already known.
    The list and the bases array are built aside and swapped with no Python call between,
    so another thread of this process never sees them disagree."""
    cdef int64_t* bases_c
    cdef Py_ssize_t n
    known = {s.base: s for s in self._segments}
    bases = list_bases(self, False)
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
            s = new_segment_obj(self, b, False)
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


cdef check_header(LogCore self, Segment s):
    try:
        with open(s.path, "rb") as f:
            h = f.read(SEGMENT_HEADER_SIZE)
    except FileNotFoundError:
        raise CorruptLogError(f"{s.path}: segment vanished while opening", path=s.path,
                              position=0, offset=s.base) from None
    check_segment_header(h, s.base, s.path)


cdef check_headers(LogCore self, bint clean, int64_t durable):
    """Every segment header must be valid, except after an unclean stop: a segment whose
    header never reached the disk was never synced, so neither it nor any later segment
    holds an acknowledged record (a sync covering a later one would have synced it too);
    those are deleted. One below the durable offset is corruption."""
    cdef Segment s
    for i in range(len(self._segments)):
        s = self._segments[i]
        try:
            check_header(self, s)
        except FormatVersionError:
            raise
        except CorruptLogError:
            if clean or s.base < durable or i == 0:
                raise
            if self._repair is not None:
                self.repaired = (s.path, 0, s.base, "segment header damaged")
            drop_segments(self, i)
            return


cdef drop_segments(LogCore self, Py_ssize_t i):
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


cdef check_chain(LogCore self, Py_ssize_t upto):
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
        touch_segment(self, s)
        p = s.find_checked(last, &length, &rc)
        at = last
        if rc != FRAME_OK:
            raise CorruptLogError(
                f"{s.path}: segment does not end at offset {last} where segment "
                f"{s.next_base} begins (gap or damage at byte {p}); run `tidelog verify "
                f"{self.path}`", path=s.path, position=p, offset=at)


cdef Segment seg_for(LogCore self, int64_t offset):
    """The segment holding `offset` (which the caller checked is in the log). Listing the
    directory lets other threads run: checks the log is still open after it."""
    cdef Py_ssize_t lo, hi, mid
    self._check_open()
    if self._readonly and (self._nbases == 0 or self._gen != ctl_get(self._ctl, CTL_GENERATION)
                           or (offset >= self._bases[self._nbases - 1] and
                           ctl_get(self._ctl, CTL_ACTIVE_BASE) != self._bases[self._nbases - 1])):
        load_segments(self)
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
            load_segments(self)
            self._check_open()
            if self._nbases and self._bases[0] <= offset:
                return seg_for(self, offset)
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
        touch_segment(self, seg)
    return seg


cdef touch_segment(LogCore self, Segment seg):
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


cdef object refresh_segments(LogCore self):
    if self._readonly:
        load_segments(self)


cdef object segment_info(LogCore self):
    self._check_open()
    if self._readonly:
        load_segments(self)
        self._check_open()
    return [((<Segment>s).base, (<Segment>s).path) for s in self._segments]
