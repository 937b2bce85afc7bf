# Readers: records, batches and cursors over (mapping, position, length). Every record handed out
# has passed its frame check (length bounds, CRC32C, offset).

from cpython.bytes cimport PyBytes_FromStringAndSize


@cython.freelist(256)
@cython.no_gc       # holds only a memoryview of a mapping, which cannot lead back: no cycles
cdef class Record:
    """One record. `value` is a read-only zero-copy memoryview into the mapped segment."""
    cdef readonly int64_t offset
    cdef readonly int64_t timestamp
    cdef object _mv             # the segment's memoryview: keeps the mapping alive
    cdef char* _v
    cdef Py_ssize_t _vlen
    cdef char* _k
    cdef int32_t _klen

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

    def __repr__(self):
        v = PyBytes_FromStringAndSize(self._v, min(self._vlen, 32))
        more = "..." if self._vlen > 32 else ""
        return (f"Record(offset={self.offset}, timestamp={self.timestamp}, key={self.key!r}, "
                f"value={v!r}{more})")


cdef inline Record make_record(Segment seg, size_t pos, uint32_t length):
    mv = seg.mv                     # held across the allocation below (it may run a GC, whose
    cdef Record r = Record.__new__(Record)     # finalizers could make the log unmap seg)
    cdef char* f = <char*>PyMemoryView_GET_BUFFER(mv).buf + pos
    cdef int32_t klen = rd_i32(f + 24)
    cdef size_t ka = key_area(klen)
    r.offset = rd_i64(f + 8)
    r.timestamp = rd_i64(f + 16)
    r._mv = mv
    r._k = f + FRAME_HEADER_SIZE
    r._klen = klen
    r._v = f + FRAME_HEADER_SIZE + ka
    r._vlen = length - FRAME_HEADER_SIZE - ka
    return r


cdef class RecordBatch:
    """Consecutive records of one segment: numpy `offsets` and `timestamps`, zero-copy `values`."""
    cdef readonly object timestamps
    cdef object _offsets        # made on first use: offsets are consecutive from _first
    cdef int64_t _first
    cdef object _mv             # a memoryview of the segment's mapping (keeps it alive) ...
    cdef char* _addr            # ... which starts here: the values are made from it
    # per record: the value's position and length, the key's length (-1: none). Segments are
    # < 4 GiB, so 32 bits each: 12 bytes per record (with the timestamp 20) keep a batch of
    # 65536 inside the L2 cache while its values are made
    cdef object _vpos_a, _vlen_a, _klen_a
    cdef const uint32_t[::1] _vpos
    cdef const uint32_t[::1] _vlen
    cdef const int32_t[::1] _klen
    cdef int64_t _nbytes
    cdef Py_ssize_t n
    cdef int64_t _ulen          # every value has this length (-1: not known to be uniform)
    cdef int64_t _ustride       # ... and the values lie at this constant stride (-1: not)

    def __len__(self):
        return self.n

    @property
    def offsets(self):
        """The records' offsets, an int64 numpy array."""
        if self._offsets is None:
            self._offsets = np.arange(self._first, self._first + self.n, dtype=np.int64)
        return self._offsets

    @property
    def values(self):
        """A sequence of read-only memoryviews, one per record, into the mapping."""
        cdef ValueList v = ValueList.__new__(ValueList)
        v.b = self
        return v

    @property
    def keys(self):
        """A list of keys (bytes, or None for a record without one)."""
        return [None if self._klen[i] < 0 else
                PyBytes_FromStringAndSize(self._addr + self._kpos(i), self._klen[i])
                for i in range(self.n)]

    cdef inline size_t _kpos(self, Py_ssize_t i):
        return self._vpos[i] - key_area(self._klen[i])

    @property
    def nbytes(self):
        """Bytes of values in the batch."""
        return self._nbytes

    cdef object view(self, Py_ssize_t i):
        return tl_subview(self._mv, self._addr + self._vpos[i], self._vlen[i])

    def values_array(self, dtype):
        """The values as one read-only numpy array of `dtype`, without copying when the records
        lie at a constant stride (same value size and key length); ValueError unless every
        value has dtype's size."""
        dt = np.dtype(dtype)
        cdef Py_ssize_t size = dt.itemsize, stride, n = self.n
        if size == 0:
            raise ValueError("dtype: zero-sized dtype")
        if n and self._ulen >= 0 and self._ustride >= 0:
            # read_batch saw every value's length and position: no numpy passes needed
            if self._ulen != size:
                raise ValueError(f"values_array: every value must be {size} bytes for dtype "
                                 f"{dt}; they are {self._ulen} bytes")
            region = tl_subview(self._mv, self._addr + self._vpos[0],
                                (n - 1) * self._ustride + size)
            return np.ndarray((n,), dt, buffer=region, strides=(self._ustride,))
        if n and not (self._vlen_a == size).all():
            raise ValueError(f"values_array: every value must be {size} bytes for dtype {dt}; "
                             f"sizes range {self._vlen_a.min()}..{self._vlen_a.max()}")
        if n == 0:
            a = np.empty(0, dt)
            a.flags.writeable = False
            return a
        stride = self._vpos[1] - self._vpos[0] if n > 1 else size
        if n > 2 and not (np.diff(self._vpos_a) == stride).all():
            # keys of different lengths: the values are not evenly spaced, so copy them
            whole = np.frombuffer(self._mv, np.uint8)
            a = whole[self._vpos_a[:, None] + np.arange(size)].view(dt).reshape(n)
            a.flags.writeable = False
            return a
        region = tl_subview(self._mv, self._addr + self._vpos[0], (n - 1) * stride + size)
        return np.ndarray((n,), dt, buffer=region, strides=(stride,))

    def __iter__(self):
        for i in range(self.n):
            yield self[i]

    def __getitem__(self, Py_ssize_t i):
        """The i-th record of the batch."""
        cdef Record r
        if i < 0:
            i += self.n
        if i < 0 or i >= self.n:
            raise IndexError("batch index out of range")
        r = Record.__new__(Record)
        r.offset = self._first + i
        r.timestamp = self.timestamps[i]
        r._mv = self._mv
        r._v = self._addr + self._vpos[i]
        r._vlen = self._vlen[i]
        r._klen = self._klen[i]
        r._k = self._addr + self._kpos(i)
        return r

    def __repr__(self):
        if self.n:
            return f"RecordBatch({self.n} records, offsets {self._first}..{self._first + self.n - 1})"
        return "RecordBatch(0 records)"


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
    b.timestamps = z
    b._vpos_a = b._vlen_a = np.empty(0, np.uint32)
    b._klen_a = np.empty(0, np.int32)
    b._vpos, b._vlen, b._klen = b._vpos_a, b._vlen_a, b._klen_a
    b._nbytes = 0
    b.n = 0
    b._ulen = b._ustride = -1
    return b


cdef class CursorCore:
    """Position in a log; iterating yields records until the end offset as of each step."""
    cdef readonly LogCore log
    cdef Segment _seg
    cdef size_t _pos
    cdef int64_t _next
    cdef readonly bint durable_only
    cdef uint32_t _llen         # _locate's check of the frame it found: its length ...
    cdef int _lrc               # ... and the frame_check result

    def _init(self, LogCore log, int64_t position, bint durable_only):
        self.log = log
        self._next = position
        self._seg = None
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
        self._next = offset
        self._seg = None

    cdef int _locate(self) except -1:
        cdef Segment seg
        self.log._check_open()
        if self._next < self.log._start_now():
            raise OffsetOutOfRangeError(
                f"cursor position {self._next} fell below start_offset {self.log._start_now()} "
                f"(retention removed it)")
        try:
            seg = self.log._seg_for(self._next)
            # checked, and found again without the index when that led astray (a hint);
            # mapping it lets threads run
            self._pos = seg.find_checked(self._next, &self._llen, &self._lrc)
        except CorruptLogError:
            self.log._check_open()
            if self._next < self.log._start_now():      # retention deleted it meanwhile
                raise OffsetOutOfRangeError(
                    f"cursor position {self._next} fell below start_offset "
                    f"{self.log._start_now()} (retention removed it)") from None
            raise
        self.log._check_open()
        self._seg = seg
        return 0

    cdef inline int _frame(self, uint32_t* length) except -1:
        """Check the frame at the cursor (locating it first when needed)."""
        cdef int rc
        if (self._seg is None or self._seg.data == NULL or
                (self._seg.next_base >= 0 and self._next >= self._seg.next_base)):
            self._locate()
            rc = self._lrc
            length[0] = self._llen
        else:
            rc = self._seg.check(self._pos, self._next, length)
        if rc == FRAME_END:
            # this process has not seen the writer's roll yet
            self.log._refresh()
            self._locate()
            rc = self._lrc
            length[0] = self._llen
        if rc != FRAME_OK:
            self.log._check_open()
            raise corrupt(self._seg.path, self._pos, self._next, rc)
        return 0

    def __iter__(self):
        return self

    def __next__(self):
        cdef uint32_t length
        cdef Record r
        self.log._check_open()
        if self._next >= self._limit():
            raise StopIteration
        self._frame(&length)
        r = make_record(self._seg, self._pos, length)
        self._pos += align8(length)
        self._next += 1
        return r

    def read_batch(self, max_records=65536, max_bytes=None):
        """Up to max_records consecutive records of one segment (and about max_bytes of values;
        at least one record when any is there). Empty at the end of the log."""
        cdef uint32_t length
        cdef int64_t limit, n_max, i = 0, start
        cdef int64_t mb = -1, got = 0, vl
        cdef int32_t klen
        cdef size_t ka, pos
        cdef char* f
        cdef Segment seg
        cdef int rc
        if not (PyLong_CheckExact(max_records) and 1 <= max_records <= 0x7FFFFFFFFFFFFFFF):
            max_records = _args.count(max_records, "max_records")
        if max_bytes is not None:
            mb = _args.count(max_bytes, "max_bytes")
        self.log._check_open()
        limit = self._limit()
        start = self._next
        if start >= limit:
            return empty_batch()
        self._frame(&length)            # locates the segment and checks the first frame
        seg = self._seg
        mv = seg.mv                     # held: numpy calls below may run a GC, whose finalizers
        cdef char* data = <char*>PyMemoryView_GET_BUFFER(mv).buf   # could make the log unmap seg
        n_max = min(<int64_t>max_records, limit - start)
        if seg.next_base >= 0:
            n_max = min(n_max, seg.next_base - start)
        tss = np.empty(n_max, np.int64)
        vpos = np.empty(n_max, np.uint32)
        vlen = np.empty(n_max, np.uint32)
        klen_a = np.empty(n_max, np.int32)
        cdef int64_t[::1] t = tss
        cdef uint32_t[::1] vp = vpos, vn = vlen
        cdef int32_t[::1] kn = klen_a
        pos = self._pos
        cdef int64_t ulen = -1, ustride = -1, prev_vp = -1, at
        cdef bint uniform = True
        while i < n_max:
            if i:
                rc = frame_check(data, seg.cap, pos, start + i, &length)
                if rc == FRAME_END:
                    break                   # the segment ends here (a reader saw the roll late)
                if rc != FRAME_OK:
                    break                   # hand out what is good; the next call raises
            f = data + pos
            klen = rd_i32(f + 24)
            ka = key_area(klen)
            vl = length - FRAME_HEADER_SIZE - ka
            if mb >= 0 and i and got + vl > mb:
                break
            got += vl
            at = <int64_t>(pos + FRAME_HEADER_SIZE + ka)
            if uniform:
                if i == 0:
                    ulen = vl
                elif vl != ulen:
                    uniform = False
                elif i == 1:
                    ustride = at - prev_vp
                elif at - prev_vp != ustride:
                    uniform = False
                prev_vp = at
            t[i] = rd_i64(f + 16)
            kn[i] = klen
            vp[i] = <uint32_t>at
            vn[i] = <uint32_t>vl
            pos += align8(length)
            i += 1
        self._pos = pos
        self._next = start + i
        cdef RecordBatch b = RecordBatch.__new__(RecordBatch)
        b._mv = mv
        b._addr = data
        b.n = i
        b._first = start
        b._nbytes = got
        b._ulen = ulen if uniform else -1
        b._ustride = (ustride if i > 1 else ulen) if uniform else -1
        if i < n_max:
            tss, vpos, vlen, klen_a = tss[:i], vpos[:i], vlen[:i], klen_a[:i]
        b.timestamps = tss
        b._vpos_a, b._vlen_a, b._klen_a = vpos, vlen, klen_a
        b._vpos, b._vlen, b._klen = vpos, vlen, klen_a
        return b
