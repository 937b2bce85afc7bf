# Readers: records and batches over frames (format v2: a frame holds one record, or
# many in columns). Every record or value handed out has passed its frame's check (rules 1-5:
# bounds, CRC32C, columns) and holds the offset asked for; large frames are checked once per
# mapping (Segment.frame_at's memo). A RecordBatch is a list of parts: a frame part (records
# a..a+n of one verified frame) or a run part (consecutive single-form frames, per-record
# arrays). Cursors that hand them out: cursor.pxi. Writes no LogCore field.

from cpython.bytes cimport PyBytes_FromStringAndSize


@cython.freelist(256)
@cython.no_gc       # holds only a memoryview of a mapping, which cannot lead back: no cycles
cdef class Record:
    """One record, as :meth:`Log.read`, a cursor or a :class:`RecordBatch` hands it out (every
    record handed out has passed its CRC32C check). Not made by users.

    Attributes (read-only):

    - ``offset`` (int): its offset in the log.
    - ``timestamp`` (int): nanoseconds since the epoch, set at append unless given there.
    - ``key`` (bytes or None): its key, copied; None when it was appended without one.
    - ``value`` (memoryview): its value, a read-only zero-copy view into the mapped segment.
      The view stays valid (the mapping stays alive) as long as it exists, also after the
      log is closed or retention deleted the segment.
    - ``headers`` (list of (str, bytes)): its headers in the order appended (names may
      repeat), copied; an empty list when it has none.
    - ``len(record)``: the value's length in bytes; ``bytes(record)``: a copy of the value.

    Records compare equal by (offset, timestamp, key, value bytes, headers) and hash
    consistently with that (so they work in sets and as dict keys). A record pickles with a copy
    of its key, value and headers (for a multiprocessing worker, say): the copy needs neither
    the log nor its files."""
    cdef readonly int64_t offset
    cdef readonly int64_t timestamp
    cdef object _mv             # the segment's memoryview: keeps the mapping alive
    cdef char* _v
    cdef Py_ssize_t _vlen
    cdef char* _k
    cdef int32_t _klen
    cdef object _hdr            # its headers, a list of (str, bytes); None: none (headers.pxi)

    @property
    def headers(self):
        return [] if self._hdr is None else list(self._hdr)

    @property
    def value(self):
        return tl_subview(self._mv, self._v, self._vlen)

    @property
    def key(self):
        if self._klen < 0:
            return None
        return PyBytes_FromStringAndSize(self._k, self._klen)

    def __len__(self):
        return self._vlen

    def __bytes__(self):
        return PyBytes_FromStringAndSize(self._v, self._vlen)

    def __eq__(self, other):
        """Records are equal when their offset, timestamp, key (None differs from b"") and value
        bytes are: a record read from a log equals its unpickled copy, and records of two logs
        compare by content."""
        cdef Record o
        if not isinstance(other, Record):
            return NotImplemented
        o = other
        return (self.offset == o.offset and self.timestamp == o.timestamp and
                self._klen == o._klen and self._vlen == o._vlen and
                (self._klen <= 0 or memcmp(self._k, o._k, <size_t>self._klen) == 0) and
                (self._vlen == 0 or memcmp(self._v, o._v, <size_t>self._vlen) == 0) and
                (self._hdr or []) == (o._hdr or []))

    def __ne__(self, other):
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    def __hash__(self):
        """Hashable, consistently with ==, in O(1): the hash covers the offset, the timestamp
        and the value's length (records are immutable; equal records agree on all three)."""
        return hash((self.offset, self.timestamp, self._vlen))

    def __reduce__(self):
        """Pickling copies the key and value bytes (a record read from a log points into the
        mapped segment): the copy unpickles, in any process, to an equal Record whose value is a
        read-only memoryview of its own bytes."""
        cdef Py_ssize_t ka = self._klen if self._klen > 0 else 0
        blob = PyBytes_FromStringAndSize(NULL, ka + self._vlen)    # (_mv keeps our bytes alive)
        cdef char* b = PyBytes_AS_STRING(blob)
        if ka:
            memcpy(b, self._k, <size_t>ka)
        if self._vlen:
            memcpy(b + ka, self._v, <size_t>self._vlen)
        if self._hdr:
            return (_record_from_pickle, (self.offset, self.timestamp, self._klen, blob,
                                          list(self._hdr)))
        return (_record_from_pickle, (self.offset, self.timestamp, self._klen, blob))

    def __repr__(self):
        v = PyBytes_FromStringAndSize(self._v, min(self._vlen, 32))
        more = "..." if self._vlen > 32 else ""
        hd = f", headers={self._hdr!r}" if self._hdr else ""
        return (f"Record(offset={self.offset}, timestamp={self.timestamp}, key={self.key!r}, "
                f"value={v!r}{more}{hd})")


def _record_from_pickle(offset, timestamp, klen, blob, headers=None):
    """Rebuild a pickled Record: `blob` holds its key (klen bytes; -1: no key) then its value;
    `headers` a list of (str, bytes) or None. Checks what it is given: a pickle is data from
    outside."""
    cdef Record r
    cdef int32_t kl
    cdef Py_ssize_t size, ka
    if type(blob) is not bytes:
        raise TypeError(f"Record pickle: expected bytes, not {type(blob).__name__}")
    size = PyBytes_GET_SIZE(blob)
    offset = _args.offset(offset, "offset")
    timestamp = _args.offset(timestamp, "timestamp")
    klen = _args.integer(klen, "klen")
    if not -1 <= klen <= size or klen > 0x7FFFFFFF:
        raise ValueError(f"Record pickle: key length {klen} does not fit {size} bytes")
    kl = klen
    ka = kl if kl > 0 else 0
    mv = memoryview(blob)               # (keeps blob alive: the pointers below are into it)
    r = Record.__new__(Record)
    r.offset = offset
    r.timestamp = timestamp
    r._mv = mv
    r._k = PyBytes_AS_STRING(blob)
    r._klen = kl
    r._v = r._k + ka
    r._vlen = size - ka
    r._hdr = pickled_headers(headers, "Record pickle")
    return r


cdef object pickled_headers(object h, str what):
    """A pickled record's headers, checked: None, or a list of (str, bytes) pairs."""
    if h is None:
        return None
    if type(h) is not list:
        raise TypeError(f"{what}: headers: expected a list, not {type(h).__name__}")
    for pair in h:
        if (type(pair) is not tuple or len(pair) != 2 or type(pair[0]) is not str
                or type(pair[1]) is not bytes):
            raise TypeError(f"{what}: headers: expected (str, bytes) pairs")
    return h or None


cdef inline bint single_at(const char* data, size_t cap, size_t pos, int64_t expect,
                           uint32_t* length, int32_t* klen) noexcept nogil:
    """The frame at data+pos (cap: bytes that may be read) is the single form a single append
    writes, passes its CRC (segment.pxi's single_check: rules 1-4) and begins with record
    `expect`: the per-record paths over single appends (cursor iteration, read_batch) take it
    without a layout or a method call. False for anything else, damage included: the caller
    then asks frame_at(), which also looks again at a segment that grew and names the problem."""
    cdef const char* f = data + pos
    cdef uint32_t n
    if data == NULL or pos + FRAME_HEADER_SIZE > cap:
        return False
    n = tl_load_u32_acquire(f)      # first: the writer stores the length last
    if rd_i64(f + 8) != expect or single_check(f, cap - pos, n, klen) != FRAME_OK:
        return False
    length[0] = n
    return True


cdef inline Record make_record_at(Segment seg, size_t pos, const FrameLayout* L, uint32_t i):
    """Record i of the verified frame at pos (layout L) of seg."""
    if L.attrs & ATTR_CODEC:
        return make_record_z(seg_inflate(seg, pos, L), i)       # compression.pxi
    mv = seg.mv                     # held across the allocation below (it may run a GC, whose
    cdef Record r = Record.__new__(Record)     # finalizers could make the log unmap seg)
    cdef const char* f = <const char*>PyMemoryView_GET_BUFFER(mv).buf + pos
    cdef const char* k
    cdef const char* v
    cdef size_t vl
    frame_record(f, L, i, &r.timestamp, &k, &r._klen, &v, &vl)
    if L.attrs & ATTR_HEADERS:
        r._hdr = frame_headers(f, L, i) or None        # headers.pxi
    r.offset = L.base + i
    r._mv = mv
    r._k = <char*>k
    r._v = <char*>v
    r._vlen = vl
    return r


cdef Record make_record_z(ZFrame z, uint32_t i):
    """Record i of an inflated compressed frame (its views keep z's buffer alive)."""
    cdef Record r = Record.__new__(Record)
    cdef const char* k
    cdef const char* v
    cdef size_t vl
    frame_record(z.f, &z.L, i, &r.timestamp, &k, &r._klen, &v, &vl)
    if z.L.attrs & ATTR_HEADERS:
        r._hdr = frame_headers(z.f, &z.L, i) or None
    r.offset = z.L.base + i
    r._mv = z.mv
    r._k = <char*>k
    r._v = <char*>v
    r._vlen = vl
    return r


cdef inline Record single_record(Segment seg, size_t pos, int64_t offset, uint32_t length,
                                 int32_t klen):
    """The record of the single-form frame at pos of seg that single_at() just took (its
    length and key length given): make_record_at without a layout."""
    mv = seg.mv                     # (held across the allocation: see make_record_at)
    cdef Record r = Record.__new__(Record)
    cdef const char* f = <const char*>PyMemoryView_GET_BUFFER(mv).buf + pos
    cdef size_t ka = key_area(klen)
    r.offset = offset
    r.timestamp = rd_i64(f + 16)
    r._mv = mv
    r._klen = klen
    r._k = <char*>f + FRAME_HEADER_SIZE if klen >= 0 else NULL
    r._v = <char*>f + FRAME_HEADER_SIZE + ka
    r._vlen = length - FRAME_HEADER_SIZE - ka
    return r


cdef Record make_record(Segment seg, size_t pos, uint32_t length):
    """The first record of the frame at pos, which passed frame_check()."""
    cdef FrameLayout L
    frame_layout(seg.data + pos, length, &L)
    return make_record_at(seg, pos, &L, 0)


@cython.final
@cython.no_gc
cdef class _Part:
    """Records [start, start + n) of a RecordBatch. A frame part: records a .. a+n-1 of the
    verified frame at pos (layout L) - O(1) to make, whatever n. A run part: n consecutive
    single-form frames, each value's position and length and key length in arrays (the key
    lies just before the value: key area, then value, in a single-form frame with vpad 0 and no
    headers)."""
    cdef Py_ssize_t start, n
    cdef bint frame
    cdef size_t pos
    cdef FrameLayout L
    cdef uint32_t a
    cdef object ts_a, vpos_a, vlen_a, klen_a
    cdef const int64_t[::1] ts
    cdef const uint32_t[::1] vpos
    cdef const uint32_t[::1] vlen
    cdef const int32_t[::1] klen
    cdef object zmv             # a compressed frame's part: its inflated frame (ZFrame.mv) ...
    cdef const char* zf         # ... at this address (NULL: the frame is at pos of the mapping)
    cdef int64_t ulen           # run: every value has this length (-1: not known to be uniform)
    cdef int64_t ustride        # ... and the values lie at this constant stride (-1: not)

    cdef _Part moved(self, Py_ssize_t start):
        cdef _Part q = _Part.__new__(_Part)
        q.start = start
        q.n = self.n
        q.frame = self.frame
        q.pos = self.pos
        q.L = self.L
        q.a = self.a
        q.ts_a, q.vpos_a, q.vlen_a, q.klen_a = self.ts_a, self.vpos_a, self.vlen_a, self.klen_a
        if not self.frame:
            q.ts, q.vpos, q.vlen, q.klen = self.ts, self.vpos, self.vlen, self.klen
        q.ulen = self.ulen
        q.ustride = self.ustride
        q.zmv = self.zmv
        q.zf = self.zf
        return q


cdef inline const char* part_at(const char* addr, _Part p) noexcept:
    """Where a frame part's frame lies: in the mapping at addr + pos, or its inflated copy."""
    return p.zf if p.zf != NULL else addr + p.pos


cdef inline object part_mv(object mv, _Part p):
    """The memoryview a part's record views are made from (and that keeps them valid)."""
    return p.zmv if p.zf != NULL else mv


cdef inline size_t part_first_value(const char* f, const FrameLayout* L, uint32_t a) noexcept:
    """Position in frame f of the value of record a."""
    if L.attrs & ATTR_UNIFORM:
        return L.c_values + <size_t>a * L.usize
    return L.c_values + rd_u32(f + L.c_voff + 4 * <size_t>a)


cdef inline int64_t frame_bytes(const char* f, const FrameLayout* L, uint32_t a, uint32_t k) noexcept:
    """Bytes of the values of records a .. a+k-1 of frame f."""
    if L.attrs & ATTR_UNIFORM:
        return <int64_t>k * L.usize
    return <int64_t>rd_u32(f + L.c_voff + 4 * <size_t>(a + k)) - rd_u32(f + L.c_voff + 4 * <size_t>a)


cdef inline uint32_t frame_fit(const char* f, const FrameLayout* L, uint32_t a, uint32_t k,
                               int64_t room) noexcept:
    """How many records from a (at most k) have values totalling at most room bytes."""
    cdef uint32_t lo = 0, hi = k, mid
    if room < 0:
        return 0
    if L.attrs & ATTR_UNIFORM:
        return k if L.usize == 0 else <uint32_t>min(<int64_t>k, room // L.usize)
    while lo < hi:              # the largest m with bytes(a, m) <= room
        mid = (lo + hi + 1) >> 1
        if frame_bytes(f, L, a, mid) <= room:
            lo = mid
        else:
            hi = mid - 1
    return lo


cdef class RecordBatch:
    """Consecutive records of one segment, from :meth:`Cursor.read_batch`,
    :meth:`Cursor.poll`, :meth:`Log.read_batch` or :meth:`Cursor.follow_batches`: numpy
    `offsets` and `timestamps`, zero-copy `values`.

    A batch holds the records of one segment only, so it may hold fewer than asked for; an
    empty batch means the cursor was at the end. It may span several frames of the log (an
    ``append_batch`` is stored as one frame, or a few when large); :meth:`frames` splits it
    into one batch per frame (or per run of single appends), each zero-copy in every column.
    ``len(batch)`` is its record count; ``batch[i]`` (negative i counts from the end;
    IndexError outside) and iteration give :class:`Record` objects. A batch pickles with a
    copy of its keys and values.
    """
    cdef object _offsets        # made on first use: offsets are consecutive from _first
    cdef object _timestamps     # made on first use
    cdef int64_t _first
    cdef object _mv             # a memoryview of the segment's mapping (keeps it alive) ...
    cdef char* _addr            # ... which starts here: parts' positions are relative to it
    cdef list _parts            # _Part objects, in order (none when empty)
    cdef _Part _one              # the part, when there is exactly one
    cdef Py_ssize_t _lastp      # index of the part last looked at (sequential access)
    cdef int64_t _nbytes
    cdef Py_ssize_t n
    cdef object _hdrs           # an unpickled batch's headers (a list per record), else None

    def __len__(self):
        return self.n

    cdef object hdr_at(self, Py_ssize_t i):
        """Record i's headers: a list of (str, bytes), or None when it has none."""
        cdef _Part p
        if self._hdrs is not None:
            return self._hdrs[i] or None
        p = self.part_of(i)
        if p.frame and (p.L.attrs & ATTR_HEADERS):
            return frame_headers(part_at(self._addr, p), &p.L, <uint32_t>(p.a + i - p.start)) or None
        return None

    @property
    def headers(self):
        """The records' headers: one list of (str, bytes) per record, in order (an empty list
        for a record without headers)."""
        cdef Py_ssize_t i
        cdef _Part p
        if self._hdrs is not None:
            return [list(h) if h else [] for h in self._hdrs]
        out = []
        for p in self._parts:
            if p.frame and (p.L.attrs & ATTR_HEADERS):
                for i in range(p.n):
                    out.append(frame_headers(part_at(self._addr, p), &p.L, <uint32_t>(p.a + i)))
            else:
                out.extend([[] for i in range(p.n)])
        return out

    cdef _Part part_of(self, Py_ssize_t i):
        cdef Py_ssize_t lo, hi, mid
        cdef _Part p
        if self._one is not None:
            return self._one
        p = self._parts[self._lastp]
        if p.start <= i < p.start + p.n:
            return p
        lo = 0
        hi = len(self._parts) - 1
        while lo < hi:                  # the last part starting at or before i
            mid = (lo + hi + 1) >> 1
            if (<_Part>self._parts[mid]).start <= i:
                lo = mid
            else:
                hi = mid - 1
        self._lastp = lo
        return self._parts[lo]

    cdef void rec_at(self, Py_ssize_t i, int64_t* ts, const char** k, int32_t* kl,
                     const char** v, size_t* vl):
        cdef _Part p = self.part_of(i)
        cdef Py_ssize_t j = i - p.start
        if p.frame:
            frame_record(part_at(self._addr, p), &p.L, <uint32_t>(p.a + j), ts, k, kl, v, vl)
        else:
            ts[0] = p.ts[j]
            v[0] = self._addr + p.vpos[j]
            vl[0] = p.vlen[j]
            kl[0] = p.klen[j]
            k[0] = v[0] - key_area(p.klen[j])

    @property
    def offsets(self):
        """The records' offsets, an int64 numpy array."""
        if self._offsets is None:
            self._offsets = np.arange(self._first, self._first + self.n, dtype=np.int64)
        return self._offsets

    @property
    def timestamps(self):
        """The records' timestamps (ns since the epoch), an int64 numpy array: a read-only
        zero-copy view of the frame's timestamps column for a batch within one frame that has
        one, else an array made on first use."""
        cdef _Part p
        if self._timestamps is None:
            chunks = []
            for p in self._parts:
                if not p.frame:
                    chunks.append(p.ts_a)
                elif p.L.c_ts:
                    chunks.append(np.frombuffer(tl_subview(
                        part_mv(self._mv, p), part_at(self._addr, p) + p.L.c_ts + 8 * <size_t>p.a,
                        8 * p.n),
                        np.int64))
                else:
                    chunks.append(np.full(p.n, p.L.ts, np.int64))
            if not chunks:
                self._timestamps = np.empty(0, np.int64)
            elif len(chunks) == 1:
                self._timestamps = chunks[0]
            else:
                self._timestamps = np.concatenate(chunks)
        return self._timestamps

    @property
    def values(self):
        """A sequence of read-only memoryviews, one per record, into the mapping."""
        cdef ValueList v = ValueList.__new__(ValueList)
        v.b = self
        return v

    @property
    def keys(self):
        """A list of keys (bytes, or None for a record without one)."""
        cdef Py_ssize_t i
        cdef int64_t ts
        cdef const char* k
        cdef const char* v
        cdef int32_t kl
        cdef size_t vl
        out = []
        for i in range(self.n):
            self.rec_at(i, &ts, &k, &kl, &v, &vl)
            out.append(None if kl < 0 else PyBytes_FromStringAndSize(k, kl))
        return out

    @property
    def nbytes(self):
        """Bytes of values in the batch."""
        return self._nbytes

    cdef object view(self, Py_ssize_t i):
        cdef _Part p = self._one        # (one part: the common case, without a method call)
        if p is None:
            p = self.part_of(i)
        cdef Py_ssize_t j = i - p.start
        cdef const char* f
        cdef uint32_t r, a
        if not p.frame:
            return tl_subview(self._mv, self._addr + p.vpos[j], p.vlen[j])
        f = part_at(self._addr, p)
        r = <uint32_t>(p.a + j)
        if p.L.attrs & ATTR_UNIFORM:
            return tl_subview(part_mv(self._mv, p), <char*>f + p.L.c_values + <size_t>r * p.L.usize,
                              p.L.usize)
        a = rd_u32(f + p.L.c_voff + 4 * <size_t>r)
        return tl_subview(part_mv(self._mv, p), <char*>f + p.L.c_values + a,
                          rd_u32(f + p.L.c_voff + 4 * <size_t>r + 4) - a)

    def frames(self):
        """The batch split where its records change frames: a list of RecordBatch, one per
        frame of the log it touches (a run of single appends counts as one), in order. Each
        is zero-copy in every column: ``values_array`` a view of the frame's values,
        ``timestamps`` a view of its timestamps column when it has one. An empty batch gives
        an empty list."""
        cdef _Part p
        cdef RecordBatch b
        out = []
        for p in self._parts:
            b = RecordBatch.__new__(RecordBatch)
            b._mv = self._mv
            b._addr = self._addr
            b._one = p.moved(0) if p.start else p
            b._parts = [b._one]
            b.n = p.n
            b._first = self._first + p.start
            b._nbytes = part_nbytes(self._addr, p)
            if self._hdrs is not None:
                b._hdrs = self._hdrs[p.start:p.start + p.n]
            out.append(b)
        return out

    def values_array(self, dtype):
        """The values as one read-only numpy array of `dtype` (anything numpy.dtype() takes),
        one element per record.

        Zero-copy (a view of the mapping) when the values lie at one stride in memory: always
        for a batch within one frame (the values of an ``append_batch`` are contiguous), and
        for a run of single appends with the same value size and key length (a strided view).
        Otherwise - a batch spanning several frames - one gather copy into a new array
        (:meth:`frames` gives zero-copy views per frame). Raises ValueError unless every value
        is exactly dtype's item size in bytes (or for a zero-sized dtype)."""
        dt = np.dtype(dtype)
        cdef Py_ssize_t size = dt.itemsize, n = self.n, i, at
        cdef _Part p
        cdef const char* src
        cdef char* dst
        cdef unsigned char[::1] ob
        if size == 0:
            raise ValueError("dtype: zero-sized dtype")
        if n == 0:
            a = np.empty(0, dt)
            a.flags.writeable = False
            return a
        for p in self._parts:
            part_sizes_are(self._addr, p, size, dt)
        if self._one is not None:
            p = self._one
            if p.frame:
                region = tl_subview(part_mv(self._mv, p), part_at(self._addr, p) + part_first_value(
                    part_at(self._addr, p), &p.L, p.a), n * size)
                return np.ndarray((n,), dt, buffer=region)
            if p.ustride >= 0 or n == 1 or (n == 2 or (np.diff(p.vpos_a) ==
                                                       p.vpos[1] - p.vpos[0]).all()):
                stride = p.ustride if p.ustride >= 0 else (p.vpos[1] - p.vpos[0] if n > 1 else size)
                region = tl_subview(self._mv, self._addr + p.vpos[0], (n - 1) * stride + size)
                return np.ndarray((n,), dt, buffer=region, strides=(stride,))
        # several frames (or keys of different lengths): one gather copy
        out = np.empty(n, dt)
        ob = out.view(np.uint8).reshape(n * size)
        dst = <char*>&ob[0]
        mv = self._mv                   # (keeps the mapping for the copy below)
        for p in self._parts:
            if p.frame:
                memcpy(dst + p.start * size,
                       part_at(self._addr, p) + part_first_value(part_at(self._addr, p), &p.L, p.a),
                       p.n * size)
            else:
                for i in range(p.n):
                    memcpy(dst + (p.start + i) * size, self._addr + p.vpos[i], size)
        out.flags.writeable = False
        return out

    def __iter__(self):
        for i in range(self.n):
            yield self[i]

    def __getitem__(self, Py_ssize_t i):
        """The i-th record of the batch."""
        cdef Record r
        cdef const char* k
        cdef const char* v
        cdef size_t vl
        if i < 0:
            i += self.n
        if i < 0 or i >= self.n:
            raise IndexError("batch index out of range")
        r = Record.__new__(Record)
        self.rec_at(i, &r.timestamp, &k, &r._klen, &v, &vl)
        r.offset = self._first + i
        r._mv = part_mv(self._mv, self.part_of(i))
        r._v = <char*>v
        r._vlen = vl
        r._k = <char*>k
        r._hdr = self.hdr_at(i)
        return r

    def __reduce__(self):
        """Pickling copies the records' keys and values into one bytes object, packed 8-byte
        aligned as in a segment: the copy unpickles, in any process, to a batch with the same
        offsets, timestamps, keys and values (values_array still without copying when the
        values lie at a constant stride) that no longer refers to the log."""
        cdef Py_ssize_t i, n = self.n
        cdef size_t total = 0, at = 0, ka
        cdef int64_t ts
        cdef const char* k
        cdef const char* v
        cdef int32_t kl
        cdef size_t vl
        mv = self._mv                   # (keeps the mapping for the copy below)
        kls = np.empty(n, np.int32)
        vls = np.empty(n, np.uint32)
        cdef int32_t[::1] kls_v = kls
        cdef uint32_t[::1] vls_v = vls
        for i in range(n):
            self.rec_at(i, &ts, &k, &kl, &v, &vl)
            kls_v[i] = kl
            vls_v[i] = <uint32_t>vl
            total += key_area(kl) + align8(vl)
        blob = PyBytes_FromStringAndSize(NULL, total)
        cdef char* b = PyBytes_AS_STRING(blob)
        for i in range(n):
            self.rec_at(i, &ts, &k, &kl, &v, &vl)
            ka = key_area(kl)
            if ka:
                memcpy(b + at, k, <size_t>kl)
                memset(b + at + kl, 0, ka - <size_t>kl)
                at += ka
            memcpy(b + at, v, vl)
            memset(b + at + vl, 0, align8(vl) - vl)
            at += align8(vl)
        hdrs = self.headers
        if any(hdrs):
            return (_batch_from_pickle, (self._first, np.array(self.timestamps, np.int64),
                                         kls, vls, blob, hdrs))
        return (_batch_from_pickle, (self._first, np.array(self.timestamps, np.int64),
                                     kls, vls, blob))

    def __repr__(self):
        if self.n:
            return f"RecordBatch({self.n} records, offsets {self._first}..{self._first + self.n - 1})"
        return "RecordBatch(0 records)"


cdef int64_t part_nbytes(const char* addr, _Part p):
    cdef Py_ssize_t i
    cdef int64_t t = 0
    if p.frame:
        return frame_bytes(part_at(addr, p), &p.L, p.a, <uint32_t>p.n)
    for i in range(p.n):
        t += p.vlen[i]
    return t


cdef int part_sizes_are(const char* addr, _Part p, Py_ssize_t size, object dt) except -1:
    """ValueError unless every value of the part is `size` bytes."""
    cdef const char* f
    cdef uint32_t lo = 0xFFFFFFFF, hi = 0, x, i
    if p.frame:
        f = part_at(addr, p)
        if p.L.attrs & ATTR_UNIFORM:
            lo = hi = p.L.usize
        else:
            for i in range(p.a, p.a + <uint32_t>p.n):
                x = rd_u32(f + p.L.c_voff + 4 * <size_t>i + 4) - rd_u32(f + p.L.c_voff + 4 * <size_t>i)
                lo = min(lo, x)
                hi = max(hi, x)
    elif p.ulen >= 0:
        lo = hi = <uint32_t>p.ulen
    else:
        lo = p.vlen_a.min()
        hi = p.vlen_a.max()
    if lo != size or hi != size:
        if lo == hi:
            raise ValueError(f"values_array: every value must be {size} bytes for dtype {dt}; "
                             f"they are {lo} bytes")
        raise ValueError(f"values_array: every value must be {size} bytes for dtype {dt}; "
                         f"sizes range {lo}..{hi}")
    return 0


cdef _Part run_part(Py_ssize_t start, tss, vpos, vlen, klen_a, int64_t ulen, int64_t ustride):
    cdef _Part p = _Part.__new__(_Part)
    p.start = start
    p.n = len(tss)
    p.frame = False
    p.ts_a, p.vpos_a, p.vlen_a, p.klen_a = tss, vpos, vlen, klen_a
    p.ts, p.vpos, p.vlen, p.klen = tss, vpos, vlen, klen_a
    p.ulen = ulen
    p.ustride = ustride
    return p


cdef object _pickled_ints(object x, str what, object dtype, object lo, object hi):
    """A pickled batch's per-record integers as a 1-D array of `dtype`: integers in [lo, hi]
    only (numpy's own conversion would truncate floats, parse strings and wrap or overflow)."""
    # (a list goes element by element: numpy would make [1, 2**63] float64)
    a = x if isinstance(x, np.ndarray) else np.asarray(x, object)
    if a.ndim != 1:
        raise ValueError(f"RecordBatch pickle: {what}: expected a 1-D sequence, not {a.ndim}-D")
    if a.size == 0:
        return np.empty(0, dtype)
    if a.dtype.kind == "O":         # Python ints (beyond int64, say): each one checked
        a = np.array([_args.integer(v, f"RecordBatch pickle: {what}") for v in a], object)
    elif a.dtype.kind not in "iu":
        raise TypeError(f"RecordBatch pickle: {what}: expected integers, not {a.dtype}")
    if a.min() < lo or a.max() > hi:
        raise ValueError(f"RecordBatch pickle: {what}: outside [{lo}, {hi}]")
    return np.array(a, dtype)


def _batch_from_pickle(first, timestamps, klen, vlen, blob, headers=None):
    """Rebuild a pickled RecordBatch: per record its timestamp, key length (-1: no key) and
    value length; `blob` holds each record's key area then its value, 8-byte aligned. Checks
    what it is given: a pickle is data from outside."""
    cdef RecordBatch b
    cdef int64_t ulen = -1, ustride = -1
    if type(blob) is not bytes:
        raise TypeError(f"RecordBatch pickle: expected bytes, not {type(blob).__name__}")
    first = _args.offset(first, "first")
    tss = _pickled_ints(timestamps, "timestamps", np.int64, _args.INT64_MIN, _args.INT64_MAX)
    kl = _pickled_ints(klen, "key lengths", np.int32, -1, 0x7FFFFFFF)
    vl = _pickled_ints(vlen, "value lengths", np.uint32, 0, 0xFFFFFFFF)
    n = len(tss)
    if kl.shape != (n,) or vl.shape != (n,):
        raise ValueError("RecordBatch pickle: timestamps, key and value lengths disagree")
    if n and (first + n - 1 > _args.INT64_MAX or first < 0):
        raise ValueError(f"RecordBatch pickle: offsets {first}.. out of range")
    kspace = np.where(kl < 0, 0, (kl.astype(np.int64) + 7) & ~7)
    vspace = (vl.astype(np.int64) + 7) & ~7
    ends = np.cumsum(kspace + vspace)
    if (int(ends[n - 1]) if n else 0) != len(blob) or len(blob) > MAX_SEGMENT_BYTES:
        raise ValueError(f"RecordBatch pickle: {len(blob)} bytes do not match the lengths")
    vpos = (ends - vspace).astype(np.uint32)
    b = RecordBatch.__new__(RecordBatch)
    b._mv = memoryview(blob)
    b._addr = PyBytes_AS_STRING(blob)
    b.n = n
    b._first = first
    b._nbytes = int(vl.sum(dtype=np.int64))
    if n and (vl == vl[0]).all():
        if n == 1:
            ulen = ustride = vl[0]
        elif (np.diff(vpos.astype(np.int64)) == int(vpos[1]) - int(vpos[0])).all():
            ulen = vl[0]
            ustride = int(vpos[1]) - int(vpos[0])
    b._timestamps = tss
    if headers is not None:
        if type(headers) is not list or len(headers) != n:
            raise ValueError("RecordBatch pickle: headers: expected a list, one per record")
        b._hdrs = [pickled_headers(h, "RecordBatch pickle") for h in headers]
    if n:
        b._one = run_part(0, tss, vpos, vl, kl, ulen, ustride)
        b._parts = [b._one]
    else:
        b._parts = []
    return b


cdef class ValueList:
    """The values of a RecordBatch: a sequence of zero-copy memoryviews made on access."""
    cdef RecordBatch b

    def __len__(self):
        return self.b.n

    def __getitem__(self, i):
        cdef Py_ssize_t j
        if isinstance(i, slice):
            return [self.b.view(j) for j in range(*i.indices(self.b.n))]
        j = i
        if j < 0:
            j += self.b.n
        if j < 0 or j >= self.b.n:
            raise IndexError("values index out of range")
        return self.b.view(j)

    def __iter__(self):
        cdef ValueIter it = ValueIter.__new__(ValueIter)
        it.b = self.b
        it.i = 0
        return it


cdef class ValueIter:
    cdef RecordBatch b
    cdef Py_ssize_t i

    def __iter__(self):
        return self

    def __next__(self):
        if self.i >= self.b.n:
            raise StopIteration
        self.i += 1
        return self.b.view(self.i - 1)


cdef RecordBatch empty_batch():
    cdef RecordBatch b = RecordBatch.__new__(RecordBatch)
    z = np.empty(0, np.int64)
    b._offsets = z
    b._timestamps = z
    b._parts = []
    b._nbytes = 0
    b.n = 0
    return b
