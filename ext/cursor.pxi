# Cursors: CursorCore, a position in a log that yields its records one by one (__next__) or a
# RecordBatch at a time (read_batch), and moves to an offset (_set_position; waits, follow and
# seek by time are the Python layer's, cursor.py). Every record it hands out has passed its
# frame's check (reader.pxi's make_record_at / single_record). Writes only its own fields
# (_seg, _pos, _next, _L, _lok, _lrc, closed); no LogCore field. Never releases the GIL.

cdef object cursor_closed(CursorCore cur):
    name = getattr(cur, "name", None)
    what = "cursor" if name is None else f"cursor {name!r}"
    where = "" if cur.log is None else f" of {cur.log.path}"
    return LogClosedError(f"{what}{where} is closed: open another with log.cursor()")


cdef class CursorCore:
    """Position in a log; iterating yields records until the end offset as of each step.

    - ``log``: the :class:`Log` it reads.
    - ``durable_only`` (bool): it reads only records below `durable_offset`.
    - ``closed`` (bool): close() was called; every later read, seek and wait raises
      :exc:`LogClosedError`.
    """
    cdef readonly LogCore log
    cdef Segment _seg
    cdef size_t _pos            # position of the frame holding _next (_lok), or where the
                                # frame beginning with _next should be (not _lok)
    cdef int64_t _next
    cdef readonly bint durable_only
    cdef FrameLayout _L         # the frame at _pos, verified, when _lok
    cdef bint _lok
    cdef int _lrc               # _locate's check of the frame it found
    cdef readonly bint closed   # close() was called: every read, seek and wait refuses

    def _mark_closed(self):
        """Refuse every later use (the cursor holds nothing that needs releasing: the log owns
        the mappings); a read running in another thread meanwhile finishes as it would have."""
        self.closed = True

    def _check_usable(self):
        """LogClosedError naming the cursor once it is closed."""
        if self.closed:
            raise cursor_closed(self)

    def _init(self, LogCore log, int64_t position, bint durable_only):
        self.log = log
        self._next = position
        self._seg = None
        self._lok = False
        self.durable_only = durable_only

    @property
    def position(self):
        """Offset of the next record this cursor yields."""
        return self._next

    cdef inline int64_t _limit(self) noexcept:
        if self.durable_only:
            return self.log._durable_now()
        return self.log._end_now()

    def _set_position(self, int64_t offset):
        if self.closed:
            raise cursor_closed(self)
        self._next = offset
        self._seg = None
        self._lok = False

    cdef int _locate(self, int64_t at) except -1:
        """Find the frame holding offset `at`, the cursor's position: sets _seg, _pos, _L,
        _lok and _lrc together and returns 1; returns 0, setting nothing, when the position
        changed meanwhile. Finding it lets other threads run (listing, mapping), and one of
        them may use this cursor then (close() and commit() may come from another thread; a
        finalizer or a signal handler may read it): the fields always agree with each other
        and with _next (else a later check reported damage that is not there)."""
        cdef Segment seg
        cdef Py_ssize_t pos
        cdef FrameLayout L
        cdef int lrc = FRAME_END
        self.log._check_open()
        if at < self.log._start_now():
            raise OffsetOutOfRangeError(
                f"cursor position {at} fell below start_offset {self.log._start_now()} "
                f"(retention removed it)")
        try:
            seg = seg_for(self.log, at)
            # checked, and found again without the index when that led astray (a hint)
            pos = seg.locate(at, &L, &lrc)
        except CorruptLogError:
            self.log._check_open()
            if self._next != at:
                return 0
            if at < self.log._start_now():          # retention deleted it meanwhile
                raise OffsetOutOfRangeError(
                    f"cursor position {at} fell below start_offset "
                    f"{self.log._start_now()} (retention removed it)") from None
            raise
        self.log._check_open()
        if self._next != at:
            return 0
        self._seg = seg
        self._pos = pos
        self._L = L
        self._lok = lrc == FRAME_OK
        self._lrc = lrc
        return 1

    cdef inline int _frame(self) except -1:
        """Make sure the cursor's frame (_seg, _pos, _L) is verified and holds _next (locating
        it first when needed): 1 then, 0 when the cursor was moved meanwhile (see _locate):
        the caller looks at its position again."""
        cdef int rc
        cdef int64_t at = self._next
        if (self._seg is None or self._seg.data == NULL or
                (self._seg.next_base >= 0 and at >= self._seg.next_base)):
            if not self._locate(at):
                return 0
            rc = self._lrc
        elif self._lok and self._L.base <= at and at - self._L.base < <int64_t>self._L.count:
            return 1
        else:
            rc = self._seg.frame_at(self._pos, at, &self._L)
            if rc == FRAME_OK and self._L.base != at:
                rc = FRAME_BAD_OFFSET
            self._lok = rc == FRAME_OK
        if rc == FRAME_END:
            # this process has not seen the writer's roll yet
            self.log._refresh()
            if self._next != at or not self._locate(at):
                return 0
            rc = self._lrc
        if rc != FRAME_OK:
            self._lok = False
            self.log._check_open()
            raise corrupt(self._seg.path, self._pos, at, rc)
        return 1

    def __iter__(self):
        return self

    def __next__(self):
        cdef Record r
        cdef int64_t i, at
        cdef Segment seg
        cdef uint32_t flen
        cdef int32_t fk
        cdef size_t pos
        if self.closed:
            raise cursor_closed(self)
        self.log._check_open()
        while True:
            at = self._next
            if at >= self._limit():
                raise StopIteration
            seg = self._seg
            if (not self._lok and seg is not None and (seg.next_base < 0 or at < seg.next_base)
                    and single_at(seg.data, seg.cap, self._pos, at, &flen, &fk)):
                # a single append's frame (the common case of a log of single appends): no
                # layout, no method call
                pos = self._pos
                r = single_record(seg, pos, at, flen, fk)
                if self._next == at:        # (a finalizer may have moved this cursor)
                    self._next = at + 1
                    self._pos = pos + align8(flen)
                return r
            if self._frame():
                break
        i = self._next - self._L.base
        r = make_record_at(self._seg, self._pos, &self._L, <uint32_t>i)
        # (make_record_at may run a GC, whose finalizers may move this cursor: check)
        if self._next == r.offset:
            self._next += 1
            if i + 1 >= self._L.count:
                self._pos += align8(self._L.length)
                self._lok = False
        return r

    def read_batch(self, max_records=65536, max_bytes=None):
        """The next records, as a :class:`RecordBatch`, and move past them.

        `max_records` (int, default 65536; at least 1): at most this many records.
        `max_bytes` (int, bytes, default None: no limit): stop after about this many bytes of
        values (at least one record when any is there). The batch holds records of one segment
        only, so it may be shorter; it is empty at the end of the log (the end offset, or the
        durable offset for a durable-only cursor). It may begin and end inside a frame (the
        next call goes on there). Raises :exc:`OffsetOutOfRangeError` when the position fell
        below `start_offset` (retention), :exc:`CorruptLogError` at damage."""
        cdef int64_t limit, n_max, i = 0, start
        cdef int64_t mb = -1, got = 0, vl, fb
        cdef uint32_t a, k
        cdef size_t pos
        cdef char* f
        cdef Segment seg
        cdef FrameLayout L, L2
        cdef int rc
        cdef bint inside = False        # stopped inside the frame at pos (L verified)
        cdef FrameLayout* Lp            # the layout of the frame's columns (inflated: zfr's)
        cdef ZFrame zfr
        cdef bint fast                  # the frame at pos is a single append's (L not filled)
        cdef uint32_t flen              # the frame's length, key length, timestamp
        cdef int32_t fk
        cdef int64_t fts
        cdef size_t ka
        if not (PyLong_CheckExact(max_records) and 1 <= max_records <= 0x7FFFFFFFFFFFFFFF):
            max_records = _args.count(max_records, "max_records")
        if max_bytes is not None:
            mb = _args.count(max_bytes, "max_bytes")
        if self.closed:
            raise cursor_closed(self)
        self.log._check_open()
        limit = self._limit()
        cdef char* data
        while True:
            start = self._next
            if start >= limit:
                return empty_batch()
            if not self._frame():       # locates the segment, verifies the first frame
                continue
            # what follows works on (seg, pos, L, start) taken here, never on the cursor's
            # fields: locating lets other threads run, and the allocations below may run a GC
            # whose finalizers run Python code (a signal handler too), so another user of this
            # cursor may move it meanwhile. (_frame made sure the frame holds `start`: this
            # looks once more, cheaply, before trusting it)
            seg = self._seg
            pos = self._pos
            L = self._L
            mv = seg.mv                 # held: a finalizer could make the log unmap seg
            data = <char*>PyMemoryView_GET_BUFFER(mv).buf
            if (frame_layout(data + pos, seg.cap - pos, &L2) == FRAME_OK and L2.base == L.base
                    and L2.length == L.length and L.base <= start
                    and start - L.base < <int64_t>L.count):
                break
            self.log._check_open()
            limit = self._limit()
        n_max = min(<int64_t>max_records, limit - start)
        if seg.next_base >= 0:
            n_max = min(n_max, seg.next_base - start)
        parts = []
        cdef _Part part
        # the run of single-form frames being gathered (arrays made when the first comes)
        tss = vpos = vlen = klen_a = None
        cdef int64_t[::1] t
        cdef uint32_t[::1] vp, vn
        cdef int32_t[::1] kn
        cdef int64_t r0 = -1, ulen = -1, ustride = -1, prev_vp = -1, at
        cdef bint uniform = True
        a = <uint32_t>(start - L.base)
        while i < n_max:
            f = data + pos
            Lp = &L
            zfr = None
            fast = i > 0 and single_at(data, seg.cap, pos, start + i, &flen, &fk)
            if fast:
                fts = rd_i64(f + 16)        # a single append's frame: no layout needed
            else:
                if i:
                    rc = seg.frame_at(pos, start + i, &L)
                    if rc != FRAME_OK or L.base != start + i:
                        break       # the segment ends here (FRAME_END: a reader saw the roll
                                    # late), or damage: hand out what is good; the next raises
                    a = 0
                flen = L.length
                fk = L.klen1
                fts = L.ts
                if L.attrs & ATTR_CODEC:
                    # compressed: decompressed once into a buffer the part keeps (compression.pxi)
                    try:
                        zfr = seg_inflate(seg, pos, &L)
                    except CorruptLogError:
                        if i:
                            break           # hand out what is good; the next read raises
                        raise
                    f = zfr.f
                    Lp = &zfr.L
            if not fast and (zfr is not None or (L.attrs & (ATTR_MULTI | ATTR_HEADERS))
                             or L.c_values != FRAME_HEADER_SIZE + key_area(L.klen1)):
                # a frame part: records a .. a+k-1, O(1) whatever k
                k = <uint32_t>min(<int64_t>(L.count - a), n_max - i)
                fb = frame_bytes(f, Lp, a, k)
                if mb >= 0 and got + fb > mb:
                    k = frame_fit(f, Lp, a, k, mb - got)
                    if k == 0 and i == 0:
                        k = 1               # at least one record
                    if k == 0:
                        break
                    fb = frame_bytes(f, Lp, a, k)
                if r0 >= 0:                 # close the run before it
                    parts.append(self._run(r0, i - r0, tss, vpos, vlen, klen_a,
                                           ulen if uniform else -1, ustride, uniform))
                    r0 = -1
                part = _Part.__new__(_Part)
                part.start = i
                part.n = k
                part.frame = True
                part.pos = pos
                part.L = Lp[0]
                part.a = a
                if zfr is not None:
                    part.zmv = zfr.mv
                    part.zf = zfr.f
                parts.append(part)
                i += k
                got += fb
                if a + k < L.count:
                    inside = True           # cut inside the frame: the cursor stays on it
                    break
            else:
                ka = key_area(fk)
                vl = flen - FRAME_HEADER_SIZE - ka
                if mb >= 0 and i and got + vl > mb:
                    break
                if r0 < 0:
                    r0 = i
                    tss = np.empty(n_max - i, np.int64)
                    vpos = np.empty(n_max - i, np.uint32)
                    vlen = np.empty(n_max - i, np.uint32)
                    klen_a = np.empty(n_max - i, np.int32)
                    t = tss
                    vp = vpos
                    vn = vlen
                    kn = klen_a
                    uniform = True
                    ulen = ustride = prev_vp = -1
                got += vl
                at = <int64_t>(pos + FRAME_HEADER_SIZE + ka)
                if uniform:
                    if i == r0:
                        ulen = vl
                    elif vl != ulen:
                        uniform = False
                    elif i == r0 + 1:
                        ustride = at - prev_vp
                    elif at - prev_vp != ustride:
                        uniform = False
                    prev_vp = at
                t[i - r0] = fts
                kn[i - r0] = fk
                vp[i - r0] = <uint32_t>at
                vn[i - r0] = <uint32_t>vl
                i += 1
            pos += align8(flen)
        if r0 >= 0:
            parts.append(self._run(r0, i - r0, tss, vpos, vlen, klen_a,
                                   ulen if uniform else -1, ustride, uniform))
        self._seg = seg                 # (together: see _locate)
        self._pos = pos
        self._L = L
        self._lok = inside
        self._next = start + i
        cdef RecordBatch b = RecordBatch.__new__(RecordBatch)
        b._mv = mv
        b._addr = data
        b.n = i
        b._first = start
        b._nbytes = got
        b._parts = parts
        if len(parts) == 1:
            b._one = parts[0]
        return b

    cdef _Part _run(self, int64_t r0, int64_t n, tss, vpos, vlen, klen_a, int64_t ulen,
                   int64_t ustride, bint uniform):
        if n < len(tss):
            tss, vpos, vlen, klen_a = tss[:n], vpos[:n], vlen[:n], klen_a[:n]
        if not uniform:
            ulen = ustride = -1
        elif n == 1:
            ustride = ulen
        return run_part(r0, tss, vpos, vlen, klen_a, ulen, ustride)
