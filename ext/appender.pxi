# The appender: the active segment and what goes into it - append / append_batch's records as
# Items (their arguments converted by batchargs.pxi), framing (frame_into), the staging buffer and pwrite
# (write_run) or copies into the mapping, publishing the new end (publish_run), the .idx/.tix
# entries (index_note), and rolls to a new segment (roll, roll_to, create_segment, set_active).
# Writes (under the writer lock _wlock, or with _busy held by the GIL-holding fast path): _active,
# _w, _wpos, _wcap, _whard, _base, _next, _idx, _tix, _idx_stride, _max_ts, _written, _rolling, _stage, _scap.
# Releases the GIL: large runs are copied and pwritten without it (write_locked holds _wlock, so no
# other writer and no close() touches the active segment meanwhile); a roll makes os calls.


cdef struct Item:
    const char* v
    size_t vlen
    const char* k
    int32_t klen
    int64_t ts
    const char* h           # headers (headers.pxi: pack_headers), hn of them; NULL, 0: none
    uint32_t hn
    size_t hnb, hvb         # ... their name and value bytes


cdef struct IntCol:        # a column of append_batch's int_headers (headers.pxi: int_header_cols)
    const char* name        # its header name, UTF-8, nlen bytes (in a bytes object kept alive)
    size_t nlen
    const int64_t* vals     # one int per record of the batch (in an int64 array kept alive)


cdef int pwrite_all(int fd, const char* buf, size_t n, size_t pos) noexcept nogil:
    """pwrite every byte (short writes and EINTR retried); 0 or an errno."""
    cdef ssize_t w
    while n:
        w = pwrite(fd, buf, n, <off_t>pos)
        if w < 0:
            if errno == EINTR:
                continue
            return errno
        if w == 0:
            return EIO
        buf += w
        pos += <size_t>w
        n -= <size_t>w
    return 0


cdef inline void item_plain(Item* it, int64_t now) noexcept nogil:
    """An Item's fields but its value: stamped `now`, no key, no headers (append_many's
    three forms of values each fill these, then or before the value)."""
    it.ts = now
    it.klen = -1
    it.h = NULL
    it.hn = 0
    it.hnb = it.hvb = 0


cdef set_active(LogCore self, Segment s, size_t pos):
    self._active = s
    self._w = s.data
    self._wcap = s.cap
    self._whard = s.cap
    self._wpos = pos
    self._base = s.base
    self._rmax = (<int64_t>s.ncap - SEGMENT_HEADER_SIZE) // MIN_RECORD_BYTES
    prealloc_activate(self, s, pos)     # prealloc.pxi: sets _wcap/_whard (may drop the index)
    self._idx = s.idx
    self._idx_stride = s.idx_stride
    self._tix = s.tix
    if self._tt != NULL:
        tl_toucher_target(self._tt, self._w, self._whard)
    if s not in self._unsynced:
        self._unsynced.append(s)


cdef Segment create_segment(LogCore self, int64_t base, int64_t capacity):
    """A new segment: written under a .tmp name, preallocated, header, then renamed."""
    cdef Segment s = new_segment_obj(self, base, True)
    s.newest_ts = -(1 << 62)        # empty: this writer's running max will cover it all
    for ext in (".idx", ".tix"):             # left over from a segment of the same base
        try:
            os.unlink(s.path[:len(s.path) - 4] + ext)
        except FileNotFoundError:
            pass
    tmp = s.path + ".tmp"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        rc = prealloc_new_file(fd, capacity)        # prealloc.pxi: the first step
        if rc:
            raise_oserror(rc, tmp)
        os.pwrite(fd, segment_header(base, capacity, tl_now_ns()), 0)
        os.rename(tmp, s.path)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    self._dir_dirty = True
    try:
        s.attach(fd)
    except BaseException:
        # nothing may be left that claims offsets the writer keeps appending elsewhere
        s.close_fd()
        for ext in (".seg", ".idx", ".tix"):
            try:
                os.unlink(s.path[:len(s.path) - 4] + ext)
            except OSError:
                pass
        os.fsync(self._dir_fd)
        raise
    return s


cdef inline void index_note(LogCore self, size_t pos, int64_t off, int64_t ts) noexcept nogil:
    cdef uint64_t rel = <uint64_t>(off - self._base)
    if ts > self._max_ts:
        self._max_ts = ts
    if (rel & (self._idx_stride - 1)) == 0 and self._idx != NULL:
        tl_store_u32_release(self._idx + (rel // self._idx_stride) * 4, <uint32_t>pos)
        if (rel & (TIX_STRIDE - 1)) == 0:
            wr_i64(self._tix + (rel // TIX_STRIDE) * 8, self._max_ts)


cdef int locked_roll(LogCore self, size_t need) except -1:
    """roll() for a single append: rolling calls the OS, which lets other threads run, so
    they are held off (they wait in _wait_idle) until the new segment is in place."""
    self._lock_writer()
    try:
        self._check_write()
        # (another thread may have rolled meanwhile)
        if need > self._wcap - self._wpos or self._next - self._base >= self._rmax:
            roll(self, need, self._next - self._base >= self._rmax)
    finally:
        self._unlock_writer()
    return 0


cdef int roll(LogCore self, size_t need, bint full=False) except -1:
    """Roll to a new segment so that `need` bytes of frames fit (writer lock held); `full`:
    the segment holds as many records as it may (R, FORMAT.md rule 8), a roll even if the bytes
    fit. The native flusher has no file from here until a Python sync has synced both and the
    directory (nf_update)."""
    if not full and grow_active(self, need):    # prealloc.pxi: room by allocating a step further
        return 0
    self._rolling = True
    try:
        if self._nf != NULL:
            tl_flusher_set_fd(self._nf, -1)  # two files to sync now: Python's sync does it
        roll_to(self, need)
        return fit_after_roll(self, need)   # prealloc.pxi: the new file is one step long
    finally:
        self._rolling = False


cdef int roll_to(LogCore self, size_t need) except -1:
    cdef Segment seg
    if need > <size_t>(self._seg_bytes - SEGMENT_HEADER_SIZE):
        raise ValueError(f"{need} bytes of frames do not fit in a segment of segment_bytes="
                         f"{self._seg_bytes} (open the log with a larger segment_bytes)")
    cdef Segment old = self._active
    if self._wpos == SEGMENT_HEADER_SIZE:
        if self._whard < <size_t>self._seg_bytes:
            # an empty active segment made with a smaller segment_bytes (an earlier open):
            # replace it by one of today's size (nothing in it to lose; readers notice the
            # new file by its inode)
            seg = create_segment(self, old.base, self._seg_bytes)
            self._segments[len(self._segments) - 1] = seg
            with self._durable_cv:
                if old in self._unsynced:       # a syncing leader keeps its reference
                    self._unsynced.remove(old)
            set_active(self, seg, SEGMENT_HEADER_SIZE)
            self._max_ts = -(1 << 62)
            return 0
        raise ValueError(f"{need} bytes of frames do not fit in the current segment of "
                         f"{self._whard} bytes")
    if self._next > MAX_BASE_OFFSET:
        raise TidelogError(f"{self.path}: offset {self._next} is beyond the largest a log may "
                           f"reach ({MAX_BASE_OFFSET}): no new segment")
    seg = create_segment(self, self._next, self._seg_bytes)
    old.next_base = seg.base
    if old.newest_ts != TS_UNKNOWN:
        old.newest_ts = self._max_ts    # filled from empty here: the running max is exact
    self._segments.append(seg)
    push_base(self, seg.base)
    set_active(self, seg, SEGMENT_HEADER_SIZE)
    old.writable = False        # sealed: mapped again read-only, its fd kept only until a sync
    touch_segment(self, old)
    self._max_ts = -(1 << 62)
    ctl_set(self._ctl, CTL_ACTIVE_BASE, seg.base)
    if self._retain_bytes >= 0 or self._retain_ns >= 0:
        try:
            retain(self)
        except OSError as e:     # the append itself succeeded: report, do not fail it
            warnings.warn(f"{self.path}: retention failed: {e}", RuntimeWarning)
    seal_handoff(self)      # durability.pxi: at most a few sealed segments keep a descriptor
    return 0


cdef int64_t append1(LogCore self, const char* v, size_t vlen, const char* k, int32_t klen,
                     int64_t ts) except -1:
    cdef size_t need = align8(FRAME_HEADER_SIZE + key_area(klen) + vlen)
    cdef int64_t off
    if self._written >= self._kick_at:
        pressure(self)
    if self._busy:
        self._wait_idle()
    else:
        self._check_write()     # the caller's argument handling may have let close() run
    if need > self._wcap - self._wpos or self._next - self._base >= self._rmax:
        locked_roll(self, need)
        self._check_write()     # a close() deferred during the roll ran as it ended
    off = self._next
    frame_write(self._w + self._wpos, off, ts, k, klen, v, vlen, 0, True)
    index_note(self, self._wpos, off, ts)
    self._wpos += need
    self._written += need
    if self._tt != NULL:
        tl_toucher_kick(self._tt, self._wpos)
    self._next = off + 1
    self._publish(CTL_END, off + 1)
    return off


cdef object append_one(LogCore self, value, key=None, timestamp=None, headers=None):
    # (close() sets _closing and then _wstate: an append that passed the check below holds
    # the GIL until its record is published, which close() waits for)
    cdef Py_buffer vb, kb
    cdef const char* vp
    cdef const char* kp = NULL
    cdef Py_ssize_t vlen, klen = -1
    cdef bint vrel = False, krel = False
    cdef int64_t ts, off, now
    cdef Item item
    self._check_entry()
    if PyBytes_Check(value):
        vp = PyBytes_AS_STRING(value)
        vlen = PyBytes_GET_SIZE(value)
    else:
        value = get_buffer(value, &vb, "value")
        if value is None:
            vrel = True
            vp = <const char*>vb.buf
            vlen = vb.len
        else:
            vp = PyBytes_AS_STRING(value)
            vlen = PyBytes_GET_SIZE(value)
    try:
        if key is not None:
            if PyBytes_Check(key):
                kp = PyBytes_AS_STRING(key)
                klen = PyBytes_GET_SIZE(key)
            else:
                key = get_buffer(key, &kb, "key")
                if key is None:
                    krel = True
                    kp = <const char*>kb.buf
                    klen = kb.len
                else:
                    kp = PyBytes_AS_STRING(key)
                    klen = PyBytes_GET_SIZE(key)
            if klen >= 0x7FFFFFFF:
                raise ValueError("key: longer than 2 GiB")
        now = tl_now_ns()
        ts = now if timestamp is None else to_timestamp(timestamp, "timestamp")
        if <size_t>vlen > <size_t>(0xFFFFFFFF - 4096) - <size_t>(klen if klen > 0 else 0):
            raise ValueError(f"value: {vlen} bytes is larger than a record can be")
        hblob = None
        if headers is not None:
            hblob = pack_headers(headers, -1, &item)     # headers.pxi
            if hblob is not None and (<size_t>vlen + <size_t>(klen if klen > 0 else 0) +
                                      hdr_cols_bytes(1, item.hn, item.hnb, item.hvb) >
                                      <size_t>(0xFFFFFFFF - 4096)):
                raise ValueError("value: with its headers larger than a record can be")
        if (hblob is not None or vlen >= self._pwrite_min or
                (self._codec and vlen + FRAME_HEADER_SIZE >= Z_MIN_BYTES)):
            # a large record: staged and written with pwrite like a batch (a store through
            # the mapping would first make the kernel zero each fresh page); a record with
            # headers too (headers.pxi frames it), and one to compress (compression.pxi)
            if hblob is None:
                item.h = NULL
                item.hn = 0
                item.hnb = item.hvb = 0
            item.v = vp
            item.vlen = <size_t>vlen
            item.k = kp
            item.klen = <int32_t>klen
            item.ts = ts
            off = write_items(self, &item, 1, True, False, 0)
        else:
            off = append1(self, vp, <size_t>vlen, kp, <int32_t>klen, ts)
    finally:
        if vrel:
            PyBuffer_Release(&vb)
        if krel:
            PyBuffer_Release(&kb)
    if self._mode == MODE_ALWAYS:
        sync_to(self, off + 1)
    elif (self._mode == MODE_BATCH and now - self._last_sync_ns >= self._interval_ns and
            (self._nf == NULL or not tl_flusher_active(self._nf))):
        batch_due(self, off + 1)
    return off


cdef object append_many(LogCore self, values, keys=None, timestamps=None, bint atomic=True,
                        headers=None, int_headers=None, value_offsets=None):
    cdef Item* items = NULL
    cdef IntCol* cols = NULL
    cdef Py_ssize_t ncols = 0
    cdef Py_buffer* bufs = NULL
    cdef Py_buffer abuf
    cdef bint arel = False
    cdef Py_ssize_t n = 0, i, nbufs = 0, bufcap = 0, row = 0
    cdef int64_t first, now
    cdef const int64_t[::1] tsv
    cdef char* base
    cdef PyObject** objs
    cdef list keep = []
    cdef size_t vmax = 0, uneven = 0
    cdef uint16_t attrs
    cdef const int64_t[::1] voff
    voffs = None
    self._check_entry()
    if value_offsets is not None:
        # one buffer, its values back to back (Arrow's binary layout): value i is
        # values[value_offsets[i]:value_offsets[i + 1]] - no object per value
        if not PyObject_CheckBuffer(values) or isinstance(values, str):
            raise TypeError(f"values: with value_offsets, one bytes-like object holding the "
                            f"values back to back, not {type(values).__name__}")
        voffs = packed_offsets(value_offsets)
        n = len(voffs) - 1
        voff = voffs
        # (a strided view is copied, as append()'s value is: its bytes in order)
        copy = get_buffer(values, &abuf, "values")
        if copy is not None:
            keep.append(copy)
            PyObject_GetBuffer(copy, &abuf, PyBUF_SIMPLE)
        arel = True
        # (the offsets are checked inside the try below, which releases the buffer: was
        # before it, and a refused batch left a bytearray never resizable again, an mmap
        # never closable)
    elif isinstance(values, np.ndarray):
        arr = values
        if arr.ndim == 0:
            raise TypeError("values: a 0-d array is one value; pass a 1-D or 2-D array")
        if arr.dtype.hasobject:
            raise TypeError("values: an array of Python objects is not bytes-like")
        arr = np.ascontiguousarray(arr)
        n = arr.shape[0]
        row = (arr.nbytes // n) if n else 0
        PyObject_GetBuffer(arr.reshape(-1).view(np.uint8) if arr.nbytes else b"", &abuf, PyBUF_SIMPLE)
        arel = True
    else:
        if isinstance(values, (bytes, bytearray, memoryview, str)):
            raise TypeError(f"values: expected an iterable of bytes-like objects or a numpy "
                            f"array, not a single {type(values).__name__}")
        try:
            # a tuple is used as it is; anything else (a list included) is copied, to a tuple:
            # the items below are borrowed from seq while Python code runs (a key's or
            # header's __len__/__iter__, a timestamps __array__, a gc.callbacks hook), which
            # could empty the caller's list - or a list copy, found with gc.get_referrers
            seq = values if type(values) is tuple else tuple(values)
        except TypeError:
            raise TypeError(f"values: expected an iterable of bytes-like objects or a numpy "
                            f"array, not {type(values).__name__}") from None
        n = len(seq)
    try:
        if voffs is not None:
            if voff[0] < 0 or voff[n] > abuf.len:
                raise ValueError(f"value_offsets: {voff[0]}..{voff[n]} reach outside values' "
                                 f"{abuf.len} bytes")
            for i in range(n):
                if voff[i + 1] < voff[i]:
                    raise ValueError(f"value_offsets: {voff[i + 1]} after {voff[i]} "
                                     f"(at {i + 1}): they never decrease")
        items = <Item*>malloc(max(n, 1) * sizeof(Item))
        if items == NULL:
            raise MemoryError()
        now = tl_now_ns()       # every record's timestamp unless `timestamps` gives them
        if arel and voffs is not None:
            base = <char*>abuf.buf
            for i in range(n):
                items[i].v = base + voff[i]
                items[i].vlen = <size_t>(voff[i + 1] - voff[i])
                item_plain(&items[i], now)
                uneven |= items[i].vlen ^ items[0].vlen
                if items[i].vlen > vmax:
                    vmax = items[i].vlen
        elif arel:
            base = <char*>abuf.buf
            for i in range(n):
                items[i].v = base + i * row
                items[i].vlen = <size_t>row
                item_plain(&items[i], now)
            vmax = <size_t>row
        else:
            objs = PySequence_Fast_ITEMS(seq)      # borrowed: seq holds them
            for i in range(n):
                # distinct objects lie scattered in memory: ask for a later one's first lines
                # now (its size here, its bytes when build_multi copies them)
                if i + 8 < n:
                    tl_prefetch(objs[i + 8])
                    tl_prefetch(<char*>objs[i + 8] + 64)
                    tl_prefetch(<char*>objs[i + 8] + 128)
                item_plain(&items[i], now)
                if PyBytes_CheckExact_p(objs[i]):
                    items[i].v = PyBytes_AS_STRING_p(objs[i])
                    items[i].vlen = <size_t>PyBytes_GET_SIZE_p(objs[i])
                else:
                    item = <object>objs[i]
                    if nbufs == bufcap:
                        bufs = grow_bufs(bufs, &bufcap)
                    copy = get_buffer(item, &bufs[nbufs], f"values[{i}]")
                    if copy is None:
                        items[i].v = <const char*>bufs[nbufs].buf
                        items[i].vlen = <size_t>bufs[nbufs].len
                        nbufs += 1
                    else:
                        keep.append(copy)
                        items[i].v = PyBytes_AS_STRING(copy)
                        items[i].vlen = PyBytes_GET_SIZE(copy)
                # (the batch's attributes found in this pass when values are all there is)
                uneven |= items[i].vlen ^ items[0].vlen
                if items[i].vlen > vmax:
                    vmax = items[i].vlen
        if keys is not None:
            if isinstance(keys, (bytes, bytearray, memoryview, str)):
                raise TypeError("keys: expected a sequence of keys (bytes-like or None), one per value")
            kseq = keys if type(keys) is tuple else tuple(keys)    # (a copy: see seq)
            if len(kseq) != n:
                raise ValueError(f"keys: {len(kseq)} keys for {n} values")
            for i in range(n):
                item = kseq[i]
                if item is None:
                    continue
                if PyBytes_Check(item):
                    items[i].k = PyBytes_AS_STRING(item)
                    items[i].klen = <int32_t>min(PyBytes_GET_SIZE(item), 0x7FFFFFFF)
                else:
                    if nbufs == bufcap:
                        bufs = grow_bufs(bufs, &bufcap)
                    copy = get_buffer(item, &bufs[nbufs], f"keys[{i}]")
                    if copy is None:
                        items[i].k = <const char*>bufs[nbufs].buf
                        items[i].klen = <int32_t>min(bufs[nbufs].len, 0x7FFFFFFF)
                        nbufs += 1
                    else:
                        keep.append(copy)
                        items[i].k = PyBytes_AS_STRING(copy)
                        items[i].klen = <int32_t>min(PyBytes_GET_SIZE(copy), 0x7FFFFFFF)
        if int_headers is not None:
            ncols = int_header_cols(int_headers, n, keep, &cols)    # headers.pxi
        if headers is not None:
            if isinstance(headers, (bytes, bytearray, memoryview, str, dict)):
                raise TypeError("headers: expected a sequence of headers (a dict, a list of "
                                "(str, bytes) pairs, or None), one per value")
            try:
                hseq = headers if type(headers) is tuple else tuple(headers)   # (see seq)
            except TypeError:
                raise TypeError(f"headers: expected a sequence of headers, one per value, not "
                                f"{type(headers).__name__}") from None
            if len(hseq) != n:
                raise ValueError(f"headers: {len(hseq)} headers for {n} values")
            for i in range(n):
                if hseq[i] is not None or ncols:
                    blob = pack_headers(hseq[i], i, &items[i], cols, ncols)   # headers.pxi
                    if blob is not None:
                        keep.append(blob)
        elif ncols:
            for i in range(n):
                keep.append(pack_headers(None, i, &items[i], cols, ncols))
        if timestamps is not None:
            tsv = int64_column(timestamps, n, "timestamps", "timestamps",
                               "ints (ns since the epoch)")
            for i in range(n):
                items[i].ts = tsv[i]
        if not n:
            first = self._next
        else:
            if (keys is None and headers is None and timestamps is None and ncols == 0 and
                    vmax <= <size_t>(0xFFFFFFFF - 4096)):
                # no keys, no headers, one timestamp, no value too large: check_items' answer
                attrs = ATTR_MULTI | ATTR_TS_SHARED | (0 if uneven else ATTR_UNIFORM)
            else:
                attrs = check_items(items, n)
            first = write_items(self, items, n, atomic, arel, attrs)
    finally:
        for i in range(nbufs):
            PyBuffer_Release(&bufs[i])
        if arel:
            PyBuffer_Release(&abuf)
        free(items)
        free(cols)
        free(bufs)
    if n and self._mode == MODE_ALWAYS:
        sync_to(self, first + n)
    elif n and self._mode == MODE_BATCH:
        now = tl_now_ns()
        if (now - self._last_sync_ns >= self._interval_ns and
                (self._nf == NULL or not tl_flusher_active(self._nf))):
            batch_due(self, first + n)
    return first


cdef uint16_t check_items(Item* items, Py_ssize_t n) except 0:
    """ValueError for a record too large to frame; else the batch's attributes (batch_attrs),
    found in the same pass."""
    cdef Py_ssize_t i
    cdef bint shared = True, uniform = True, anykey = False, nokey = False, anyhdr = False
    cdef int64_t ts0 = items[0].ts
    cdef size_t v0 = items[0].vlen
    for i in range(n):
        if items[i].vlen > <size_t>(0xFFFFFFFF - 4096) or items[i].klen == 0x7FFFFFFF:
            raise ValueError(f"values[{i}]: larger than a record can be")
        if items[i].hn:
            anyhdr = True
            if (items[i].vlen + <size_t>max(items[i].klen, 0) + hdr_cols_bytes(
                    1, items[i].hn, items[i].hnb, items[i].hvb) > <size_t>(0xFFFFFFFF - 4096)):
                raise ValueError(f"values[{i}]: with its headers larger than a record can be")
        if items[i].ts != ts0:
            shared = False
        if items[i].vlen != v0:
            uniform = False
        if items[i].klen >= 0:
            anykey = True
        else:
            nokey = True
    return (ATTR_MULTI | (ATTR_TS_SHARED if shared else 0) | (ATTR_UNIFORM if uniform else 0)
            | (ATTR_KEYS if anykey else 0) | (ATTR_KEY_NULLS if anykey and nokey else 0)
            | (ATTR_HEADERS if anyhdr else 0))


cdef int64_t write_items(LogCore self, Item* items, Py_ssize_t n, bint atomic,
                         bint contig, uint16_t attrs) except -1:
    """Write the batch holding the writer lock (it may roll or copy without the GIL, which
    lets other threads run: they wait); returns the first offset. attrs: batch_attrs(items, n)
    when the caller has them (check_items), else 0."""
    cdef int64_t first
    if self._written >= self._kick_at:
        pressure(self)
    if self._busy:
        self._wait_idle()
    self._lock_writer()
    try:
        self._check_write()             # closed (or failed) while the batch was prepared
        first = self._next
        write_locked(self, items, n, atomic, contig, attrs)
    finally:
        self._unlock_writer()
    return first


cdef struct Span:
    Py_ssize_t i            # first item of a frame
    Py_ssize_t k            # its records (1: a single-form frame)
    size_t ub               # its bytes (align8(length)), at most: vpad counted as VPAD_MAX


cdef uint16_t batch_attrs(Item* items, Py_ssize_t n) noexcept nogil:
    """The attributes every multi-form frame of the batch gets (FORMAT.md §2): TS_SHARED when
    every timestamp is the same, UNIFORM when every value has one size, KEYS when a record has
    a key and KEY_NULLS when another has none."""
    cdef Py_ssize_t i
    cdef bint shared = True, uniform = True, anykey = False, nokey = False, anyhdr = False
    for i in range(n):
        if items[i].hn:
            anyhdr = True
        if items[i].ts != items[0].ts:
            shared = False
        if items[i].vlen != items[0].vlen:
            uniform = False
        if items[i].klen >= 0:
            anykey = True
        else:
            nokey = True
    return (ATTR_MULTI | (ATTR_TS_SHARED if shared else 0) | (ATTR_UNIFORM if uniform else 0)
            | (ATTR_KEYS if anykey else 0) | (ATTR_KEY_NULLS if anykey and nokey else 0)
            | (ATTR_HEADERS if anyhdr else 0))


cdef inline size_t multi_prefix(uint16_t attrs, size_t k, size_t kbytes,
                                size_t hbytes) noexcept nogil:
    """Bytes of a multi-form frame of k records before its value pad: header and columns
    (hbytes: its header columns, with HEADERS)."""
    cdef size_t p = FRAME_HEADER_SIZE
    if not (attrs & ATTR_TS_SHARED):
        p += 8 * k
    if not (attrs & ATTR_UNIFORM):
        p += align8(4 * (k + 1))
    if attrs & ATTR_KEY_NULLS:
        p += align8((k + 7) >> 3)
    if attrs & ATTR_KEYS:
        p += align8(4 * (k + 1)) + align8(kbytes)
    if attrs & ATTR_HEADERS:
        p += hbytes
    return p


cdef inline size_t single_bytes(Item* it) noexcept nogil:
    return align8(FRAME_HEADER_SIZE + key_area(it.klen) + it.vlen +
                  (hdr_cols_bytes(1, it.hn, it.hnb, it.hvb) if it.hn else 0))


cdef inline bint uniform_plain(uint16_t attrs) noexcept nogil:
    """Every value of the batch has one size, and no record has a key or headers: every frame
    of k records takes the same bytes (plan_uniform), and any run of its records has the
    batch's attributes (but TS_SHARED: a run of a batch of several timestamps may have one)."""
    return (attrs & ATTR_UNIFORM) and not (attrs & (ATTR_KEYS | ATTR_KEY_NULLS | ATTR_HEADERS))


cdef Py_ssize_t plan_uniform(Item* items, Py_ssize_t n, uint16_t attrs, size_t limit,
                             Py_ssize_t kmax, Span* out) noexcept nogil:
    """plan_spans for a uniform_plain batch in O(frames): a frame of c records takes
    align8(multi_prefix + VPAD_MAX + c * vlen), which fits `limit` iff the unaligned bytes fit
    floor8(limit); the frames plan_spans' loop would make, record for record."""
    cdef size_t per = items[0].vlen + (0 if attrs & ATTR_TS_SHARED else 8)
    cdef size_t lim8 = limit & ~(<size_t>7)
    cdef size_t fixed = FRAME_HEADER_SIZE + VPAD_MAX
    cdef Py_ssize_t cmax, i = 0, k, ns = 0
    if lim8 < fixed + 2 * per:          # (not even two records: every frame is a single)
        cmax = 1
    elif per == 0:
        cmax = n
    else:
        cmax = <Py_ssize_t>min(<size_t>n, (lim8 - fixed) // per)
    if cmax > kmax:
        cmax = kmax
    if cmax < 1:
        cmax = 1
    while i < n:
        k = min(n - i, cmax)
        out[ns].i = i
        out[ns].k = k
        out[ns].ub = (single_bytes(&items[i]) if k == 1 else
                      align8(multi_prefix(attrs, <size_t>k, 0, 0) + VPAD_MAX +
                             <size_t>k * items[0].vlen))
        ns += 1
        i += k
    return ns


cdef Py_ssize_t plan_spans(Item* items, Py_ssize_t n, uint16_t attrs, size_t limit,
                           Py_ssize_t kmax, Span* out) noexcept nogil:
    """Cut items[0..n) into frames of at most `limit` bytes and kmax records (a frame takes at
    least one record; one record alone is a single-form frame, whatever its size). Returns the
    number of frames."""
    cdef Py_ssize_t i = 0, j, ns = 0
    cdef size_t vb, kb, ub, hn, hnb, hvb
    if uniform_plain(attrs):
        return plan_uniform(items, n, attrs, limit, kmax, out)
    while i < n:
        j = i + 1
        vb = items[i].vlen
        kb = <size_t>items[i].klen if items[i].klen > 0 else 0
        hn, hnb, hvb = items[i].hn, items[i].hnb, items[i].hvb
        while j < n and j - i < kmax:
            ub = align8(multi_prefix(attrs, <size_t>(j + 1 - i),
                                     kb + (<size_t>items[j].klen if items[j].klen > 0 else 0),
                                     hdr_cols_bytes(<size_t>(j + 1 - i), hn + items[j].hn,
                                                    hnb + items[j].hnb, hvb + items[j].hvb)
                                     if attrs & ATTR_HEADERS else 0)
                        + VPAD_MAX + vb + items[j].vlen)
            if ub > limit:
                break
            vb += items[j].vlen
            if items[j].klen > 0:
                kb += <size_t>items[j].klen
            if attrs & ATTR_HEADERS:
                hn += items[j].hn
                hnb += items[j].hnb
                hvb += items[j].hvb
            j += 1
        out[ns].i = i
        out[ns].k = j - i
        out[ns].ub = (single_bytes(&items[i]) if j - i == 1 else
                      align8(multi_prefix(attrs, <size_t>(j - i), kb,
                                          hdr_cols_bytes(<size_t>(j - i), hn, hnb, hvb))
                             + VPAD_MAX + vb))
        ns += 1
        i = j
    return ns


cdef inline void put_zero_to8(char* p, size_t a) noexcept nogil:
    """Zero bytes p[a .. align8(a)) (column padding)."""
    while a & 7:
        p[a] = 0
        a += 1


cdef uint32_t build_multi(char* f, size_t pos, Item* it, Py_ssize_t k, int64_t off,
                          uint16_t attrs, bint contig, bint publish) noexcept nogil:
    """Write a multi-form frame of it[0..k) (offsets off..) at f, which stands for segment
    position pos: header, columns, value pad (the values start 64-byte aligned in the file),
    values (one memcpy when contig: they lie back to back in the source), CRC over the
    result. Its padding is written as zeros (a staging buffer holds old bytes). With publish its
    length is stored last (release), else left 0. Returns the length."""
    cdef size_t p = FRAME_HEADER_SIZE, q, kb = 0, vb = 0, c_koff = 0, c_kv = 0
    cdef Py_ssize_t i
    cdef int64_t mx
    cdef uint32_t acc
    cdef uint16_t vpad
    cdef uint32_t length
    wr_i64(f + 8, off)
    wr_u32(f + 24, <uint32_t>k)
    if attrs & ATTR_TS_SHARED:
        mx = it[0].ts
    else:
        mx = it[0].ts
        for i in range(k):
            wr_i64(f + p + 8 * i, it[i].ts)
            if it[i].ts > mx:
                mx = it[i].ts
        p += 8 * <size_t>k
    wr_i64(f + 16, mx)
    if not (attrs & ATTR_UNIFORM):
        acc = 0
        wr_u32(f + p, 0)
        for i in range(k):
            acc += <uint32_t>it[i].vlen
            wr_u32(f + p + 4 * (i + 1), acc)
        vb = acc
        q = p + 4 * (<size_t>k + 1)
        put_zero_to8(f, q)
        p = align8(q)
    else:
        vb = <size_t>k * it[0].vlen
    if attrs & ATTR_KEY_NULLS:
        c_kv = p
        q = (<size_t>k + 7) >> 3
        memset(f + p, 0, align8(q))
        for i in range(k):
            if it[i].klen >= 0:
                f[p + (i >> 3)] = <char>(<uint8_t>f[p + (i >> 3)] | (1 << (i & 7)))
        p += align8(q)
    if attrs & ATTR_KEYS:
        c_koff = p
        acc = 0
        wr_u32(f + p, 0)
        for i in range(k):
            if it[i].klen > 0:
                acc += <uint32_t>it[i].klen
            wr_u32(f + p + 4 * (i + 1), acc)
        kb = acc
        q = p + 4 * (<size_t>k + 1)
        put_zero_to8(f, q)
        p = align8(q)
    if attrs & ATTR_HEADERS:
        p = put_headers(f, p, it, k)        # headers.pxi: C5..C9, between key offsets and keys
    if attrs & ATTR_KEYS:
        for i in range(k):
            if it[i].klen > 0:
                memcpy(f + p, it[i].k, <size_t>it[i].klen)
                p += <size_t>it[i].klen
        put_zero_to8(f, p)
        p = align8(p)
    vpad = <uint16_t>((VALUES_ALIGN - ((pos + p) & (VALUES_ALIGN - 1))) & (VALUES_ALIGN - 1))
    if vpad:
        memset(f + p, 0, vpad)
        p += vpad
    wr_u32(f + 28, <uint32_t>attrs | (<uint32_t>vpad << 16))
    if contig:
        memcpy(f + p, it[0].v, vb)
        p += vb
    else:
        for i in range(k):
            memcpy(f + p, it[i].v, it[i].vlen)
            p += it[i].vlen
    length = <uint32_t>p
    put_zero_to8(f, p)
    wr_u32(f + 4, frame_crc(f, length))
    if publish:
        tl_store_u32_release(f, length)
    else:
        wr_u32(f, 0)
    return length


cdef inline void index_frame(LogCore self, size_t pos, int64_t off, Item* it, Py_ssize_t k,
                             uint16_t attrs) noexcept nogil:
    """.idx entries for every slot the frame at pos (records off..off+k-1) covers (the frame
    holding the record: FORMAT.md §3), .tix entries with the running max timestamp."""
    cdef uint64_t rel = <uint64_t>(off - self._base), end = rel + <uint64_t>k, r, st
    cdef Py_ssize_t i
    if (attrs & ATTR_TS_SHARED) or k == 1:
        if it[0].ts > self._max_ts:
            self._max_ts = it[0].ts
        if self._idx == NULL:
            return
        st = self._idx_stride
        r = (rel + st - 1) & ~(st - 1)
        while r < end:
            tl_store_u32_release(self._idx + (r // st) * 4, <uint32_t>pos)
            if (r & (TIX_STRIDE - 1)) == 0:
                wr_i64(self._tix + (r // TIX_STRIDE) * 8, self._max_ts)
            r += st
        return
    for i in range(k):
        index_note(self, pos, off + i, it[i].ts)


cdef int write_locked(LogCore self, Item* items, Py_ssize_t n, bint atomic,
                      bint contig, uint16_t attrs) except -1:
    """Frames for items[0..n) (FORMAT.md §2-3): cut into frames of at most _frame_limit bytes,
    each a group published whole (atomic: one group, in one segment; else one group per
    segment the batch reaches)."""
    cdef Span* spans = <Span*>malloc(n * sizeof(Span))
    cdef Py_ssize_t ns, a, b, i
    cdef size_t total, room, caproom
    cdef int64_t left
    cdef size_t limit = <size_t>min(max(self._frame_limit, 64), 1 << 30) if self._multi_form else 0
    if spans == NULL:
        raise MemoryError()
    try:
        if not attrs:
            attrs = batch_attrs(items, n)
        ns = plan_spans(items, n, attrs, limit, n, spans)
        if atomic:
            total = 0
            for a in range(ns):
                total += spans[a].ub
            if n > self._rmax:
                raise ValueError(f"{n} records do not fit in a segment of segment_bytes="
                                 f"{self._seg_bytes} (at most {self._rmax} records)")
            if total > self._wcap - self._wpos or self._next - self._base + n > self._rmax:
                roll(self, total, self._next - self._base + n > self._rmax)
            write_spans(self, items, spans, ns, attrs, contig)
            return 0
        a = 0
        while a < ns:
            room = self._wcap - self._wpos
            left = self._rmax - (self._next - self._base)
            total = 0
            b = a
            while b < ns and total + spans[b].ub <= room and spans[b].k <= left:
                total += spans[b].ub
                left -= spans[b].k
                b += 1
            if b == a:
                caproom = (self._active.ncap & ~(<size_t>7)) - self._wpos
                if spans[a].ub <= caproom and spans[a].k <= left:
                    roll(self, spans[a].ub)         # (prealloc.pxi: allocated a step further)
                    continue
                if (spans[a].k > 1 and left > 0 and
                        single_bytes(items + spans[a].i) <= caproom):
                    # the frame does not fit in what the segment has left: a smaller one
                    # fills it first, the rest is planned again (at most n - i frames from a)
                    i = spans[a].i
                    plan_spans(items + i, n - i, attrs, min(caproom, limit), left, spans + a)
                    spans[a].i += i
                    ns = a + 1 + plan_spans(items + spans[a].i + spans[a].k,
                                            n - spans[a].i - spans[a].k, attrs, limit, n,
                                            spans + a + 1)
                    for b in range(a + 1, ns):
                        spans[b].i += spans[a].i + spans[a].k
                    continue
                # not even its first record fits what the segment has left: a new segment
                roll(self, single_bytes(items + spans[a].i), True)
                continue
            write_spans(self, items, spans + a, b - a, attrs, contig)
            a = b
    finally:
        free(spans)
    return 0


cdef int write_spans(LogCore self, Item* items, Span* spans, Py_ssize_t ns, uint16_t attrs,
                     bint contig) except -1:
    """The frames spans[0..ns) into the active segment (they fit), published as one group.
    Large groups are framed in a staging buffer and written with pwrite: a store through the
    mapping into a fresh page faults and has the kernel zero the page first, a write of
    whole pages does not. Either way the first frame's length is stored last (mapping)."""
    cdef int fd = self._active.fd
    cdef int err = 0
    cdef Py_ssize_t a = 0, b, c, nrec = 0
    cdef size_t pos = self._wpos, chunk, ub = 0, big = 0, wrote
    cdef uint32_t first = 0
    cdef int64_t off = self._next
    if self._codec:
        return write_spans_z(self, items, spans, ns, attrs, contig)     # compression.pxi
    for b in range(ns):
        ub += spans[b].ub
        big = max(big, spans[b].ub)
        nrec += spans[b].k
    # entries for every record first (a multi frame's records can take 8 bytes or fewer), and
    # for the single appends the allocated rest can hold after them (prealloc.pxi's promise to
    # append1: its records take >= 32 bytes each; an index store past the file would SIGBUS)
    err = index_cover_err(self._active, self._next - self._base + nrec +
                          <int64_t>((self._whard - min(self._whard, self._wpos + ub))
                                    // FRAME_HEADER_SIZE))
    if err:
        raise_oserror(err, self._active.path[:len(self._active.path) - 4] + ".idx")
    if ub < <size_t>self._pwrite_min or fd < 0:
        if ub >= NOGIL_COPY_BYTES:
            with nogil:
                wrote = frames_into(self, items, spans, ns, attrs, contig, self._w + pos, pos,
                                    off, True, True, &first)
        else:
            wrote = frames_into(self, items, spans, ns, attrs, contig, self._w + pos, pos, off,
                                True, True, &first)
        publish_group(self, first, wrote, nrec)
        if self._tt != NULL:
            tl_toucher_kick(self._tt, self._wpos)
        return 0
    if max(big, <size_t>STAGE_BYTES) > self._scap:
        grow_stage(self, max(big, <size_t>STAGE_BYTES))     # before anything is written
    while a < ns:
        # as many frames as fit the staging buffer (at least one: it holds the largest)
        chunk = 0
        b = a
        while b < ns:
            if b > a and chunk + spans[b].ub > STAGE_BYTES:
                break
            chunk += spans[b].ub
            b += 1
        with nogil:
            chunk = frames_into(self, items, spans + a, b - a, attrs, contig, self._stage, pos,
                                off, a == 0, b == ns, &first if a == 0 else NULL)
            err = pwrite_all(fd, self._stage, chunk, pos)
        if err:
            # nothing is published; clear what may have reached the file so that stale
            # frames never follow the next append
            memset(self._w + self._wpos, 0, pos + chunk - self._wpos)
            raise_oserror(err, self._active.path)
        for c in range(a, b):
            off += spans[c].k
        pos += chunk
        a = b
    publish_group(self, first, pos - self._wpos, off - self._next)
    return 0


cdef size_t frames_into(LogCore self, Item* items, Span* spans, Py_ssize_t ns, uint16_t attrs,
                        bint contig, char* dst, size_t pos, int64_t off, bint head, bint tail,
                        uint32_t* first) noexcept nogil:
    """Frame spans[0..ns) (offsets off..) at dst, which stands for segment position pos, as
    part of one group: every frame but the group's last (the last here, with tail) carries
    MORE; with head the first frame is the group's first and gets no length (it is published
    last; *first gets it). Index entries are noted. Returns the bytes written."""
    cdef Py_ssize_t s
    cdef size_t at = 0
    cdef uint32_t length
    cdef uint16_t more
    cdef Item* it
    cdef bint pub
    for s in range(ns):
        it = items + spans[s].i
        more = 0 if (tail and s == ns - 1) else ATTR_MORE
        pub = not (s == 0 and head)
        if spans[s].k == 1 and it.hn:
            length = frame_write_hdr(dst + at, off, it, more, pub)     # headers.pxi
        elif spans[s].k == 1:
            frame_write(dst + at, off, it.ts, it.k, it.klen, it.v, it.vlen, more, pub)
            length = <uint32_t>(FRAME_HEADER_SIZE + key_area(it.klen) + it.vlen)
        else:
            # the frame's own attributes (a subset of the batch's: never larger than planned;
            # a run of a uniform_plain batch with one timestamp has the batch's)
            length = build_multi(dst + at, pos + at, it, spans[s].k, off,
                                 (attrs if uniform_plain(attrs) and (attrs & ATTR_TS_SHARED)
                                  else batch_attrs(it, spans[s].k)) | more, contig, pub)
        if s == 0 and head and first != NULL:
            first[0] = length
        index_frame(self, pos + at, off, it, spans[s].k, attrs)
        off += spans[s].k
        at += align8(length)
    return at


cdef void publish_group(LogCore self, uint32_t first, size_t total, Py_ssize_t n) noexcept:
    """The group's frames are in place: store the first frame's length, then the end offset."""
    tl_store_u32_release(self._w + self._wpos, first)
    self._wpos += total
    self._written += total
    self._next += n
    self._publish(CTL_END, self._next)


cdef int grow_stage(LogCore self, size_t need) except -1:
    cdef char* p = <char*>realloc(self._stage, need)
    if p == NULL:
        raise MemoryError()
    self._stage = p
    self._scap = need
    return 0
