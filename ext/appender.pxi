# The appender: the active segment and what goes into it - argument handling of append /
# append_batch (buffers, keys, timestamps), framing (frame_into), the staging buffer and pwrite
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


cdef Py_buffer* grow_bufs(Py_buffer* p, Py_ssize_t* cap) except NULL:
    """Room for more held buffers (only non-bytes elements of a batch need one)."""
    cdef Py_ssize_t n = max(16, cap[0] * 2)
    cdef Py_buffer* q = <Py_buffer*>realloc(p, n * sizeof(Py_buffer))
    if q == NULL:
        raise MemoryError()
    cap[0] = n
    return q


cdef object get_buffer(object obj, Py_buffer* view, str name):
    """Fill view with obj's contiguous buffer and return None; or return a bytes copy of a
    non-contiguous buffer; TypeError naming the argument for anything else."""
    if not PyObject_CheckBuffer(obj):
        raise TypeError(f"{name}: expected a bytes-like object (bytes, bytearray, memoryview, "
                        f"numpy array), not {type(obj).__name__}")
    try:
        PyObject_GetBuffer(obj, view, PyBUF_SIMPLE)
        return None
    except (BufferError, ValueError):     # not contiguous (memoryview / numpy say it differently)
        return memoryview(obj).tobytes()


cdef int64_t to_timestamp(object t, str name) except? -1:
    if not PyLong_CheckExact(t):
        try:
            t = _args.integer(t, name)      # numpy integers; never a bool
        except TypeError:
            raise TypeError(f"{name}: expected an int (ns since the epoch), not "
                            f"{type(t).__name__}") from None
    try:
        return t
    except OverflowError:
        raise ValueError(f"{name}: {t} is outside the int64 range") from None


cdef set_active(LogCore self, Segment s, size_t pos):
    self._active = s
    self._w = s.data
    self._wcap = s.cap
    self._whard = s.cap
    self._wpos = pos
    self._base = s.base
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
        if need > self._wcap - self._wpos:      # another thread may have rolled meanwhile
            roll(self, need)
    finally:
        self._unlock_writer()
    return 0


cdef int roll(LogCore self, size_t need) except -1:
    """Roll to a new segment so that `need` bytes of frames fit (writer lock held). The
    native flusher has no file from here until a Python sync has synced both and the
    directory (nf_update)."""
    if grow_active(self, need):     # prealloc.pxi: room by allocating a step further
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
    if need > self._wcap - self._wpos:
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


cdef object append_one(LogCore self, value, key=None, timestamp=None):
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
        if vlen >= self._pwrite_min:
            # a large record: staged and written with pwrite like a batch (a store through
            # the mapping would first make the kernel zero each fresh page)
            item.v = vp
            item.vlen = <size_t>vlen
            item.k = kp
            item.klen = <int32_t>klen
            item.ts = ts
            off = write_items(self, &item, 1, True)
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


cdef object append_many(LogCore self, values, keys=None, timestamps=None, bint atomic=True):
    cdef Item* items = NULL
    cdef Py_buffer* bufs = NULL
    cdef Py_buffer abuf
    cdef bint arel = False
    cdef Py_ssize_t n = 0, i, nbufs = 0, bufcap = 0, row = 0
    cdef int64_t first, now
    cdef const int64_t[::1] tsv
    cdef char* base
    cdef PyObject** objs
    cdef list keep = []
    self._check_entry()
    if isinstance(values, np.ndarray):
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
            seq = values if type(values) is list or type(values) is tuple else list(values)
        except TypeError:
            raise TypeError(f"values: expected an iterable of bytes-like objects or a numpy "
                            f"array, not {type(values).__name__}") from None
        n = len(seq)
    try:
        items = <Item*>malloc(max(n, 1) * sizeof(Item))
        if items == NULL:
            raise MemoryError()
        if arel:
            base = <char*>abuf.buf
            for i in range(n):
                items[i].v = base + i * row
                items[i].vlen = <size_t>row
                items[i].klen = -1
        else:
            objs = PySequence_Fast_ITEMS(seq)      # borrowed: seq holds them
            for i in range(n):
                items[i].klen = -1
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
        if keys is not None:
            if isinstance(keys, (bytes, bytearray, memoryview, str)):
                raise TypeError("keys: expected a sequence of keys (bytes-like or None), one per value")
            kseq = keys if isinstance(keys, (list, tuple)) else list(keys)
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
        if timestamps is not None:
            tarr = np.asarray(timestamps)
            if tarr.ndim != 1 or (tarr.dtype.kind not in "iu" and tarr.size):
                raise TypeError("timestamps: expected a sequence of ints (ns since the epoch)")
            if len(tarr) != n:
                raise ValueError(f"timestamps: {len(tarr)} timestamps for {n} values")
            if tarr.dtype.kind == "u" and n and tarr.max() > 0x7FFFFFFFFFFFFFFF:
                raise ValueError("timestamps: beyond the int64 range")
            tsv = np.ascontiguousarray(tarr, dtype=np.int64)
            for i in range(n):
                items[i].ts = tsv[i]
        else:
            now = tl_now_ns()
            for i in range(n):
                items[i].ts = now
        for i in range(n):
            if items[i].vlen > <size_t>(0xFFFFFFFF - 4096) or items[i].klen == 0x7FFFFFFF:
                raise ValueError(f"values[{i}]: larger than a record can be")
        first = write_items(self, items, n, atomic) if n else self._next
    finally:
        for i in range(nbufs):
            PyBuffer_Release(&bufs[i])
        if arel:
            PyBuffer_Release(&abuf)
        free(items)
        free(bufs)
    if n and self._mode == MODE_ALWAYS:
        sync_to(self, first + n)
    elif n and self._mode == MODE_BATCH:
        now = tl_now_ns()
        if (now - self._last_sync_ns >= self._interval_ns and
                (self._nf == NULL or not tl_flusher_active(self._nf))):
            batch_due(self, first + n)
    return first


cdef int64_t write_items(LogCore self, Item* items, Py_ssize_t n, bint atomic) except -1:
    """Write the batch holding the writer lock (it may roll or copy without the GIL, which
    lets other threads run: they wait); returns the first offset."""
    cdef int64_t first
    if self._written >= self._kick_at:
        pressure(self)
    if self._busy:
        self._wait_idle()
    self._lock_writer()
    try:
        self._check_write()             # closed (or failed) while the batch was prepared
        first = self._next
        write_locked(self, items, n, atomic)
    finally:
        self._unlock_writer()
    return first


cdef int write_locked(LogCore self, Item* items, Py_ssize_t n, bint atomic) except -1:
    cdef Py_ssize_t i, j
    cdef size_t total = 0, need, room
    for i in range(n):
        total += align8(FRAME_HEADER_SIZE + key_area(items[i].klen) + items[i].vlen)
    if atomic:
        if total > self._wcap - self._wpos:
            roll(self, total)
        write_run(self, items, n, total)
        return 0
    i = 0
    while i < n:
        room = self._wcap - self._wpos
        total = 0
        j = i
        while j < n:
            need = align8(FRAME_HEADER_SIZE + key_area(items[j].klen) + items[j].vlen)
            if total + need > room:
                break
            total += need
            j += 1
        if j == i:
            roll(self, align8(FRAME_HEADER_SIZE + key_area(items[i].klen) + items[i].vlen))
            continue
        write_run(self, items + i, j - i, total)
        i = j
    return 0


cdef int write_run(LogCore self, Item* items, Py_ssize_t n, size_t total) except -1:
    """Frames for items[0..n) into the active segment (they fit), published as one batch.
    Large runs are framed in a staging buffer and written with pwrite: a store through the
    mapping into a fresh page faults and has the kernel zero the page first, a write of
    whole pages does not. Either way the first frame's length is stored last (mapping)."""
    cdef int fd = self._active.fd
    cdef int err = 0
    cdef Py_ssize_t i = 0, j
    cdef size_t pos = self._wpos, chunk, need
    if total < <size_t>self._pwrite_min or fd < 0:
        if total >= NOGIL_COPY_BYTES:
            with nogil:
                frame_into(self, items, n, self._w + self._wpos, self._wpos, self._next, True, True)
        else:
            frame_into(self, items, n, self._w + self._wpos, self._wpos, self._next, True, True)
        publish_run(self, items, n, total)
        if self._tt != NULL:
            tl_toucher_kick(self._tt, self._wpos)
        return 0
    need = 0
    for j in range(n):
        need = max(need, align8(FRAME_HEADER_SIZE + key_area(items[j].klen) + items[j].vlen))
    if max(need, <size_t>STAGE_BYTES) > self._scap:
        grow_stage(self, max(need, <size_t>STAGE_BYTES))     # before anything is written
    while i < n:
        # as many frames as fit the staging buffer (at least one: it holds the largest)
        chunk = 0
        j = i
        while j < n:
            need = align8(FRAME_HEADER_SIZE + key_area(items[j].klen) + items[j].vlen)
            if j > i and chunk + need > STAGE_BYTES:
                break
            chunk += need
            j += 1
        with nogil:
            frame_into(self, items + i, j - i, self._stage, pos, self._next + i, i == 0, j == n)
            err = pwrite_all(fd, self._stage, chunk, pos)
        if err:
            # nothing is published; clear what may have reached the file so that stale
            # frames never follow the next append
            memset(self._w + self._wpos, 0, pos + chunk - self._wpos)
            raise_oserror(err, self._active.path)
        pos += chunk
        i = j
    publish_run(self, items, n, total)
    return 0


cdef void frame_into(LogCore self, Item* items, Py_ssize_t n, char* dst, size_t pos, int64_t off,
                     bint head, bint tail) noexcept nogil:
    """Frame items[0..n) (offsets off..) at dst, which stands for segment position pos, as
    part of one group: every frame but the group's last (the last here, with tail) carries
    MORE; with head the first frame is the group's first and gets no length (it is published
    last). Index entries are noted."""
    cdef Py_ssize_t i
    cdef size_t at = 0
    for i in range(n):
        frame_write(dst + at, off + i, items[i].ts, items[i].k, items[i].klen,
                    items[i].v, items[i].vlen, 0 if (tail and i == n - 1) else ATTR_MORE,
                    not (i == 0 and head))
        index_note(self, pos + at, off + i, items[i].ts)
        at += align8(FRAME_HEADER_SIZE + key_area(items[i].klen) + items[i].vlen)


cdef void publish_run(LogCore self, Item* items, Py_ssize_t n, size_t total) noexcept:
    """The run's frames are in place: store the first frame's length, then the end offset."""
    tl_store_u32_release(self._w + self._wpos,
                         <uint32_t>(FRAME_HEADER_SIZE + key_area(items[0].klen) + items[0].vlen))
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
