# Readers: records, batches and cursors over (mapping, position, length). Every record handed out
# has passed its frame check (length bounds, CRC32C, offset).

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
    - ``len(record)``: the value's length in bytes; ``bytes(record)``: a copy of the value.

    Records compare equal by (offset, timestamp, key, value bytes) and hash consistently with
    that (so they work in sets and as dict keys). A record pickles with a copy of its key and
    value (for a multiprocessing worker, say): the copy needs neither the log nor its files."""
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
                (self._vlen == 0 or memcmp(self._v, o._v, <size_t>self._vlen) == 0))

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
        return (_record_from_pickle, (self.offset, self.timestamp, self._klen, blob))

    def __repr__(self):
        v = PyBytes_FromStringAndSize(self._v, min(self._vlen, 32))
        more = "..." if self._vlen > 32 else ""
        return (f"Record(offset={self.offset}, timestamp={self.timestamp}, key={self.key!r}, "
                f"value={v!r}{more})")


def _record_from_pickle(offset, timestamp, klen, blob):
    """Rebuild a pickled Record: `blob` holds its key (klen bytes; -1: no key) then its value.
    Checks what it is given: a pickle is data from outside."""
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
    return r


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
    """Consecutive records of one segment, from :meth:`Cursor.read_batch`,
    :meth:`Cursor.poll`, :meth:`Log.read_batch` or :meth:`Cursor.follow_batches`: numpy
    `offsets` and `timestamps`, zero-copy `values`.

    A batch holds the records of one segment only (that keeps :meth:`values_array` zero-copy),
    so it may hold fewer than asked for; an empty batch means the cursor was at the end.
    ``len(batch)`` is its record count; ``batch[i]`` (negative i counts from the end;
    IndexError outside) and iteration give :class:`Record` objects. A batch pickles with a
    copy of its keys and values.

    - ``timestamps``: the records' timestamps (ns since the epoch), an int64 numpy array.
    """
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
        """The values as one read-only numpy array of `dtype` (anything numpy.dtype() takes),
        one element per record.

        Zero-copy (a strided view of the mapping) when the records lie at a constant stride
        (same value size and key length), else a copy. Raises ValueError unless every value is
        exactly dtype's item size in bytes (or for a zero-sized dtype)."""
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

    def __reduce__(self):
        """Pickling copies the records' keys and values into one bytes object, packed 8-byte
        aligned as in a segment: the copy unpickles, in any process, to a batch with the same
        offsets, timestamps, keys and values (values_array still without copying when the
        values lie at a constant stride) that no longer refers to the log."""
        cdef Py_ssize_t i, n = self.n
        cdef size_t total = 0, at = 0, ka, vl
        mv = self._mv                   # (keeps the mapping for the copy below)
        for i in range(n):
            total += key_area(self._klen[i]) + align8(self._vlen[i])
        blob = PyBytes_FromStringAndSize(NULL, total)
        cdef char* b = PyBytes_AS_STRING(blob)
        for i in range(n):
            ka = key_area(self._klen[i])
            vl = self._vlen[i]
            if ka:
                memcpy(b + at, self._addr + self._kpos(i), ka)
                memset(b + at + self._klen[i], 0, ka - <size_t>self._klen[i])
                at += ka
            memcpy(b + at, self._addr + self._vpos[i], vl)
            memset(b + at + vl, 0, align8(vl) - vl)
            at += align8(vl)
        return (_batch_from_pickle, (self._first, np.array(self.timestamps, np.int64),
                                     np.array(self._klen_a, np.int32),
                                     np.array(self._vlen_a, np.uint32), blob))

    def __repr__(self):
        if self.n:
            return f"RecordBatch({self.n} records, offsets {self._first}..{self._first + self.n - 1})"
        return "RecordBatch(0 records)"


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


def _batch_from_pickle(first, timestamps, klen, vlen, blob):
    """Rebuild a pickled RecordBatch: per record its timestamp, key length (-1: no key) and
    value length; `blob` holds each record's key area then its value, 8-byte aligned. Checks
    what it is given: a pickle is data from outside."""
    cdef RecordBatch b
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
    b._ulen = b._ustride = -1
    if n and (vl == vl[0]).all():
        if n == 1:
            b._ulen = b._ustride = vl[0]
        elif (np.diff(vpos.astype(np.int64)) == int(vpos[1]) - int(vpos[0])).all():
            b._ulen = vl[0]
            b._ustride = int(vpos[1]) - int(vpos[0])
    b.timestamps = tss
    b._vpos_a, b._vlen_a, b._klen_a = vpos, vl, kl
    b._vpos, b._vlen, b._klen = vpos, vl, kl
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
    b.timestamps = z
    b._vpos_a = b._vlen_a = np.empty(0, np.uint32)
    b._klen_a = np.empty(0, np.int32)
    b._vpos, b._vlen, b._klen = b._vpos_a, b._vlen_a, b._klen_a
    b._nbytes = 0
    b.n = 0
    b._ulen = b._ustride = -1
    return b


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
    cdef size_t _pos
    cdef int64_t _next
    cdef readonly bint durable_only
    cdef uint32_t _llen         # _locate's check of the frame it found: its length ...
    cdef int _lrc               # ... and the frame_check result
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

    cdef int _locate(self, int64_t at) except -1:
        """Find the frame of offset `at`, the cursor's position: sets _seg, _pos, _llen and
        _lrc together and returns 1; returns 0, setting nothing, when the position changed
        meanwhile. Finding it lets other threads run (listing, mapping), and one of them may
        use this cursor then (close() and commit() may come from another thread; a finalizer
        or a signal handler may read it): the fields always agree with each other and with
        _next (else a later check reported damage that is not there)."""
        cdef Segment seg
        cdef Py_ssize_t pos
        cdef uint32_t llen = 0
        cdef int lrc = FRAME_END
        self.log._check_open()
        if at < self.log._start_now():
            raise OffsetOutOfRangeError(
                f"cursor position {at} fell below start_offset {self.log._start_now()} "
                f"(retention removed it)")
        try:
            seg = seg_for(self.log, at)
            # checked, and found again without the index when that led astray (a hint)
            pos = seg.find_checked(at, &llen, &lrc)
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
        self._llen = llen
        self._lrc = lrc
        return 1

    cdef inline int _frame(self, uint32_t* length) except -1:
        """Check the frame at the cursor (locating it first when needed): 1 when it is good
        (its length in `length`; _seg and _pos say where), 0 when the cursor was moved
        meanwhile (see _locate): the caller looks at its position again."""
        cdef int rc
        cdef int64_t at = self._next
        if (self._seg is None or self._seg.data == NULL or
                (self._seg.next_base >= 0 and at >= self._seg.next_base)):
            if not self._locate(at):
                return 0
            rc = self._lrc
            length[0] = self._llen
        else:
            rc = self._seg.check(self._pos, at, length)
        if rc == FRAME_END:
            # this process has not seen the writer's roll yet
            self.log._refresh()
            if self._next != at or not self._locate(at):
                return 0
            rc = self._lrc
            length[0] = self._llen
        if rc != FRAME_OK:
            self.log._check_open()
            raise corrupt(self._seg.path, self._pos, at, rc)
        return 1

    def __iter__(self):
        return self

    def __next__(self):
        cdef uint32_t length
        cdef Record r
        if self.closed:
            raise cursor_closed(self)
        self.log._check_open()
        while True:
            if self._next >= self._limit():
                raise StopIteration
            if self._frame(&length):
                break
        r = make_record(self._seg, self._pos, length)
        self._pos += align8(length)
        self._next += 1
        return r

    def read_batch(self, max_records=65536, max_bytes=None):
        """The next records, as a :class:`RecordBatch`, and move past them.

        `max_records` (int, default 65536; at least 1): at most this many records.
        `max_bytes` (int, bytes, default None: no limit): stop after about this many bytes of
        values (at least one record when any is there). The batch holds records of one segment
        only, so it may be shorter; it is empty at the end of the log (the end offset, or the
        durable offset for a durable-only cursor). Raises :exc:`OffsetOutOfRangeError` when the
        position fell below `start_offset` (retention), :exc:`CorruptLogError` at damage."""
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
        if self.closed:
            raise cursor_closed(self)
        self.log._check_open()
        limit = self._limit()
        cdef char* data
        while True:
            start = self._next
            if start >= limit:
                return empty_batch()
            if not self._frame(&length):    # locates the segment, checks the first frame
                continue
            # what follows works on (seg, pos, start) taken here, never on the cursor's fields:
            # locating lets other threads run, and the allocations below may run a GC whose
            # finalizers run Python code (a signal handler too), so another user of this cursor
            # may move it meanwhile. (_frame made sure the frame is the one at `start`: this
            # looks once more, cheaply, before trusting its length)
            seg = self._seg
            pos = self._pos
            mv = seg.mv                 # held: a finalizer could make the log unmap seg
            data = <char*>PyMemoryView_GET_BUFFER(mv).buf
            if frame_shape(data, seg.cap, pos, start, &length) == FRAME_OK:
                break
            self.log._check_open()
            limit = self._limit()
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
        self._seg = seg                 # (the three together: see _locate)
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
