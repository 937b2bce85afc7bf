# Retention: retain_bytes / retain_seconds applied at every roll (retain) and on demand
# (apply_retention), and truncate_before (truncate_front): the oldest sealed segments are dropped
# from the front of the segment set (drop_front), never the active one.
# Writes: _start, _segments, _bases, _nbases, _bases_cap, _lru; runs under the writer lock.
# Lets other threads run: unlinking files and syncing the directory (os calls).


cdef object truncate_front(LogCore self, offset):
    cdef int64_t off, end
    cdef Py_ssize_t k = 0
    off = _args.offset(offset)
    self._check_entry()
    end = self._next
    if off > end:
        raise ValueError(f"offset: {off} is beyond end_offset {end}")
    self._lock_writer()
    try:
        self._check_write()
        while (k + 1 < len(self._segments) and
               (<Segment>self._segments[k + 1]).base <= off):
            k += 1
        drop_front(self, k)
    finally:
        self._unlock_writer()
    return self._start


cdef object apply_retention(LogCore self):
    self._check_entry()
    self._lock_writer()
    try:
        self._check_write()
        retain(self)
    finally:
        self._unlock_writer()


cdef retain(LogCore self):
    """Delete the oldest sealed segments while the log holds more than retain_bytes (files
    are preallocated: a segment counts its capacity) or their newest record is older than
    retain_seconds."""
    cdef Py_ssize_t k = 0, n = len(self._segments)
    cdef Segment seg
    cdef int64_t cutoff
    if self._retain_bytes >= 0:
        sizes = []
        for seg in self._segments:
            try:
                sizes.append(os.stat(seg.path).st_size)
            except FileNotFoundError:
                sizes.append(0)
        total = sum(sizes)
        while k < n - 1 and total > self._retain_bytes:
            total -= sizes[k]
            k += 1
    if self._retain_ns >= 0:
        cutoff = tl_now_ns() - self._retain_ns
        while k < n - 1:
            seg = self._segments[k]
            touch_segment(self, seg)
            if seg_holds_newer(seg, (<Segment>self._segments[k + 1]).base, cutoff):
                break
            k += 1
    drop_front(self, k)


cdef drop_front(LogCore self, Py_ssize_t k):
    """Delete the k oldest segments (sealed ones). The new start_offset is persisted in the
    control page first: a crash midway leaves only files below it, which the next open
    deletes. The list and bases array are swapped with no Python call between (other
    threads read them)."""
    cdef int64_t* bases_c
    cdef Py_ssize_t n, i
    cdef int64_t new_start
    if k <= 0:
        return
    if k >= len(self._segments):
        raise AssertionError("retention never deletes the active segment")
    dropped = self._segments[:k]
    keep = self._segments[k:]
    n = len(keep)
    new_start = (<Segment>keep[0]).base
    ctl_set(self._ctl, CTL_START, new_start)
    if msync(self._ctl, CONTROL_SIZE, MS_SYNC) != 0:
        raise_oserror(errno, os.path.join(self.path, CONTROL_NAME))
    bases_c = <int64_t*>malloc(max(n, 16) * sizeof(int64_t))
    if bases_c == NULL:
        raise MemoryError()
    for i in range(n):
        bases_c[i] = (<Segment>keep[i]).base
    old = <size_t>self._bases
    self._bases = bases_c
    self._bases_cap = max(n, 16)
    self._nbases = n
    self._segments = keep
    self._start = new_start
    free(<int64_t*>old)
    with self._durable_cv:
        for seg in dropped:
            if seg in self._unsynced:       # a syncing leader keeps its own reference
                self._unsynced.remove(seg)
    self._lru = [x for x in self._lru if x not in dropped]
    unlink_segment_files(dropped)
    os.fsync(self._dir_fd)
