# Segments: one memory-mapped file and its two index files. Never parses records beyond following
# lengths and reading the index (docs/FORMAT.md §2, §3). A segment file has its nominal capacity
# as its size, but its blocks are allocated in steps as the writer advances (ext/prealloc.pxi);
# its index files grow in size. A file may also be shorter than its capacity (cut, or made
# by an earlier version that grew files): `cap` is the size seen when it was mapped and no byte
# at or past it is ever read (a page past the end of a file would SIGBUS); a reader looks again
# (grew(), grew_index()) when the data or the index seem to run past what it saw.
# Frames (format v2) hold one record or many: find() walks frames, locate()/frame_at() verify
# the one holding a record, remembering large verified frames per mapping (the memo).

cdef object raise_oserror(int err, object path):
    if err == _errno.ENOSPC:
        raise LogFullError(err, f"{os.strerror(err)}: no space left for the log", path)
    raise OSError(err, os.strerror(err), path)


cdef class Mapping:
    """One mmap of a file. Unmapped when the last reference (a segment, a record, a view) goes."""
    cdef char* addr
    cdef size_t size

    def __dealloc__(self):
        if self.addr != NULL:
            munmap(self.addr, self.size)
            self.addr = NULL

    @property
    def size(self):
        return self.size

    def __getbuffer__(self, Py_buffer* buffer, int flags):
        # read-only, even over a writable mapping: records are never changed through a view
        PyBuffer_FillInfo(buffer, self, <void*>self.addr, self.size, 1, flags)

    def __releasebuffer__(self, Py_buffer* buffer):
        pass


cdef Mapping map_fd(int fd, size_t size, bint writable, object path):
    cdef Mapping m = Mapping.__new__(Mapping)
    cdef int prot = PROT_READ | (PROT_WRITE if writable else 0)
    cdef void* p
    if size == 0:
        raise CorruptLogError(f"{path}: empty file", path=path, position=0, offset=None)
    p = mmap(NULL, size, prot, MAP_SHARED, fd, 0)
    if p == MAP_FAILED:
        raise_oserror(errno, path)
    m.addr = <char*>p
    m.size = size
    return m


def segment_name(int64_t base):
    return f"{base:020d}.seg"


cdef bytes index_header(bytes magic, uint32_t stride, int64_t base):
    cdef bytearray h = bytearray(INDEX_HEADER_SIZE)
    h[0:8] = magic
    h[8:12] = (<uint32_t>FORMAT_VERSION).to_bytes(4, "little")
    h[12:16] = stride.to_bytes(4, "little")
    h[16:24] = base.to_bytes(8, "little", signed=True)
    h[60:64] = (<uint32_t>tl_crc32c(0, <char*>h, 60)).to_bytes(4, "little")
    return bytes(h)


def segment_header(int64_t base, int64_t capacity, int64_t created_ns):
    cdef bytearray h = bytearray(SEGMENT_HEADER_SIZE)
    h[0:8] = SEGMENT_MAGIC
    h[8:12] = (<uint32_t>FORMAT_VERSION).to_bytes(4, "little")
    h[12:16] = (<uint32_t>SEGMENT_HEADER_SIZE).to_bytes(4, "little")
    h[16:24] = base.to_bytes(8, "little", signed=True)
    h[24:32] = created_ns.to_bytes(8, "little", signed=True)
    h[32:40] = capacity.to_bytes(8, "little", signed=True)
    h[60:64] = (<uint32_t>tl_crc32c(0, <char*>h, 60)).to_bytes(4, "little")
    return bytes(h)


def check_segment_header(bytes h, int64_t base, str path):
    """Raise the right TidelogError unless h is a valid header of segment `base`."""
    if len(h) < SEGMENT_HEADER_SIZE:
        raise CorruptLogError(f"{path}: segment shorter than its header ({len(h)} bytes)",
                              path=path, position=0, offset=base)
    if h[0:8] != SEGMENT_MAGIC:
        raise CorruptLogError(f"{path}: not a tidelog segment (bad magic)", path=path, position=0,
                              offset=base)
    version = int.from_bytes(h[8:12], "little")
    if int.from_bytes(h[60:64], "little") != tl_crc32c(0, <const char*>h, 60):
        raise CorruptLogError(f"{path}: segment header CRC mismatch", path=path, position=0,
                              offset=base)
    if version < 1:
        raise CorruptLogError(f"{path}: segment header names format version {version}",
                              path=path, position=8, offset=base)
    if version != FORMAT_VERSION:
        raise format_version_error(path, version)     # frame.pxi (v1: made by a pre-release)
    if int.from_bytes(h[16:24], "little", signed=True) != base:
        raise CorruptLogError(f"{path}: header base offset does not match the file name",
                              path=path, position=16, offset=base)


IDX_STRIDES_READ = (4, 8, 16, 32, 64)

from libc.stdint cimport INT64_MIN
cdef int64_t TS_UNKNOWN = INT64_MIN     # Segment.newest_ts not known

cdef enum:
    MEMO_MIN_BYTES = 1024   # multi-form frames larger than this are verified once per mapping


cdef inline int64_t seg_rmax(size_t ncap) noexcept nogil:
    """R: the most records a segment of nominal capacity ncap may hold (FORMAT.md rule 8; its
    index files are sized for R records). A frame of empty uniform values costs no bytes per
    record, so only this bound keeps a forged count from reaching the index."""
    return <int64_t>((ncap - SEGMENT_HEADER_SIZE) // MIN_RECORD_BYTES)


cdef inline bint past_rmax(int64_t seg_base, size_t ncap, int64_t base, uint32_t count) noexcept nogil:
    """Rule 8 for a frame of `count` records from offset `base` in the segment of base seg_base
    (nominal capacity ncap): True when they take it past R records. (A base below seg_base is
    rule 6's concern: then the count alone is held to R.) No sum can wrap. Every rule-8
    check goes through it: readers, recovery's scan, the O(1) reopen after a clean close, the
    index walks and salvage."""
    cdef int64_t rmax = seg_rmax(ncap)
    if base < seg_base:
        return <int64_t>count > rmax
    return base - seg_base > rmax - <int64_t>count


cdef inline size_t idx_slots_for(size_t cap, size_t stride) noexcept:
    # a segment holds at most R = (capacity - 64) / 8 records (FORMAT.md rule 8)
    return (cap - SEGMENT_HEADER_SIZE) // MIN_RECORD_BYTES // stride + 1


cdef enum:
    SINGLE_OTHER = -100     # single_verify: not the common single form, use frame_verify


cdef inline int single_check(const char* f, size_t room, uint32_t length,
                             int32_t* klen) noexcept nogil:
    """single_verify without the layout: FRAME_OK (*klen set) for the frame a single append
    writes, whose CRC matches; FRAME_BAD_CRC; SINGLE_OTHER for any other frame. The readers'
    per-record paths over single appends use it directly (a layout costs a 100-byte clear)."""
    cdef uint32_t w
    cdef int32_t k
    if length < FRAME_HEADER_SIZE or <size_t>length > room:
        return SINGLE_OTHER
    w = rd_u32(f + 28) & ~(<uint32_t>ATTR_MORE)      # (a group's frames: the same checks)
    k = rd_i32(f + 24)
    if k == -1:
        if w != <uint32_t>(ATTR_TS_SHARED | ATTR_UNIFORM):
            return SINGLE_OTHER
    elif k >= 0 and w == <uint32_t>(ATTR_TS_SHARED | ATTR_UNIFORM | ATTR_KEYS):
        if FRAME_HEADER_SIZE + align8(<size_t>k) > length:
            return SINGLE_OTHER
    else:
        return SINGLE_OTHER
    if frame_crc(f, length) != rd_u32(f + 4):
        return FRAME_BAD_CRC
    klen[0] = k
    return FRAME_OK


cdef inline int single_verify(const char* f, size_t room, uint32_t length,
                              FrameLayout* L) noexcept nogil:
    """frame_verify's answer for the frame a single append writes (single form, no headers,
    vpad 0: bytes 28..31 are exactly TS_SHARED|UNIFORM, | KEYS with a key, | MORE in a group of
    single-form frames), with less work
    (the per-record scan of single appends runs this per record); SINGLE_OTHER for any other
    frame, which frame_verify then checks. Same rules (1, 2, 3, 4; rule 5 has nothing to check
    in this form), same results."""
    cdef int32_t klen
    cdef size_t ka
    cdef int rc = single_check(f, room, length, &klen)
    if rc != FRAME_OK:
        return rc
    ka = key_area(klen)
    memset(L, 0, sizeof(FrameLayout))
    L.length = length
    L.count = 1
    L.attrs = rd_u16(f + 28)
    L.base = rd_i64(f + 8)
    L.ts = rd_i64(f + 16)
    L.klen1 = klen
    L.usize = <uint32_t>(length - FRAME_HEADER_SIZE - ka)
    L.c_keys = FRAME_HEADER_SIZE if klen >= 0 else 0
    L.c_values = <uint32_t>(FRAME_HEADER_SIZE + ka)
    return FRAME_OK


cdef class Segment:
    """A segment file, mapped on first use; its .idx/.tix mapped alongside when valid."""
    cdef readonly int64_t base
    cdef readonly str path
    cdef int fd                 # the writer keeps it open for fdatasync; -1 otherwise
    cdef Mapping map
    cdef object mv              # a memoryview of all of map: record views are made from it
    cdef char* data
    cdef size_t cap             # bytes allocated (the file's size, 8-aligned) as last seen
    cdef size_t ncap            # nominal capacity: the mapping's length (file <= ncap)
    cdef size_t alloc           # the writer's: bytes allocated from the start (prealloc.pxi)
    cdef tuple fpaths           # (.seg, .idx, .tix) paths as bytes (grew(), prealloc.pxi)
    cdef uint64_t ino_c         # ino as a C value
    cdef bint mapped_rw         # the mapping is writable
    cdef object ino             # inode of the mapped file (a reader notices a replaced one)
    cdef object zlast           # compression.pxi: the frame inflated last (a ZFrame)

    cdef Py_ssize_t find_checked(self, int64_t offset, uint32_t* length, int* rc) except -2:
        """locate() for callers that need only the position and length of the (verified) frame
        holding `offset`."""
        cdef FrameLayout L
        cdef Py_ssize_t p = self.locate(offset, &L, rc)
        if rc[0] == FRAME_OK:
            length[0] = L.length
        return p

    cdef Py_ssize_t locate(self, int64_t offset, FrameLayout* L, int* rc) except -2:
        """find() and frame_at() of the frame holding `offset`: its position, with *rc FRAME_OK
        and *L its layout when it is valid (rules 1-5) and holds `offset`; when that fails,
        once more by walking from the segment start (the index is a hint: a stale entry must
        not look like damage), then once more if the writer allocated more meanwhile."""
        cdef int64_t at
        cdef Py_ssize_t p = self.find(offset, &at)
        rc[0] = self.frame_at(p, offset, L) if at == offset else FRAME_END
        if rc[0] != FRAME_OK:
            p = self.find(offset, &at, False)
            rc[0] = self.frame_at(p, offset, L) if at == offset else FRAME_END
            if rc[0] != FRAME_OK and self.grew():     # the writer allocated more since: again
                return self.locate(offset, L, rc)
        return p

    cdef inline int check(self, size_t pos, int64_t offset, uint32_t* length) except -128:
        """frame_at() of the frame at pos, which must begin with record `offset`, for callers
        that need only its length."""
        cdef FrameLayout L
        cdef int rc = self.frame_at(pos, offset, &L)
        if rc == FRAME_OK:
            if L.base != offset:
                return FRAME_BAD_OFFSET
            length[0] = L.length
        return rc

    cdef int frame_at(self, size_t pos, int64_t holding, FrameLayout* L) except -128:
        """The frame at pos is valid (FORMAT.md rules 1-5 and 8) and holds record `holding` (< 0:
        any): FRAME_OK with *L its layout, else the problem. Looks again at the file's size
        when the frame seems to run past what was allocated when this segment was mapped.
        Large multi-form frames (> MEMO_MIN_BYTES) are verified once per mapping (memo_has /
        memo_add); others at every call. Lets no other thread run. (Its error value is -128:
        the check codes are small negative numbers, and -2 is FRAME_BAD_KEY.)"""
        cdef int rc = self.frame_once(pos, L)
        if rc != FRAME_OK and rc != FRAME_BAD_CRC and self.grew():
            rc = self.frame_once(pos, L)
        if rc == FRAME_OK and past_rmax(self.base, self.ncap, L.base, L.count):
            # rule 8: a forged count (empty uniform values cost no byte per record) would
            # hand out more records than the segment may hold: billions from a 40-byte frame
            return FRAME_BAD_COUNT
        if rc == FRAME_OK and holding >= 0 and not (
                L.base <= holding and holding - L.base < <int64_t>L.count):
            return FRAME_BAD_OFFSET
        return rc

    cdef inline int frame_once(self, size_t pos, FrameLayout* L) noexcept:
        cdef int rc
        cdef uint32_t crc, length
        if self.data == NULL or pos + FRAME_HEADER_SIZE > self.cap:
            return FRAME_END
        length = tl_load_u32_acquire(self.data + pos)
        if length <= MEMO_MIN_BYTES or not (rd_u16(self.data + pos + 28) & ATTR_MULTI):
            rc = single_verify(self.data + pos, self.cap - pos, length, L)
            if rc != SINGLE_OTHER:
                return rc
            return frame_verify(self.data + pos, self.cap - pos, L)     # small: every time
        rc = frame_layout(self.data + pos, self.cap - pos, L)
        if rc != FRAME_OK:
            return rc
        crc = rd_u32(self.data + pos + 4)
        if self.memo_has(pos, crc):
            return FRAME_OK
        rc = frame_verify(self.data + pos, self.cap - pos, L)
        if rc == FRAME_OK:
            self.memo_add(pos, crc)
        return rc

    # The verified-frame memo (docs/design/v2-format.md §7): an open-addressing set of
    # (position << 32 | crc) of the large frames this mapping verified; 0 = free slot (no
    # frame lies at position 0). Keyed with the CRC word too, so a frame rewritten at the same
    # place (a writer that recovered after a crash) is verified again. Dropped with the
    # mapping (unmap()): a fresh mapping verifies again.
    cdef bint memo_has(self, size_t pos, uint32_t crc) noexcept:
        cdef uint64_t key = (<uint64_t>pos << 32) | crc
        cdef size_t mask, h
        if self.memo == NULL:
            return False
        mask = self.memo_cap - 1
        h = <size_t>((key * <uint64_t>0x9E3779B97F4A7C15) >> 32) & mask
        while self.memo[h] != 0:
            if self.memo[h] == key:
                return True
            h = (h + 1) & mask
        return False

    cdef void memo_add(self, size_t pos, uint32_t crc) noexcept:
        cdef uint64_t key = (<uint64_t>pos << 32) | crc
        cdef uint64_t* old = self.memo
        cdef size_t oldcap = self.memo_cap, i, mask, h, cap
        if (self.memo_n + 1) * 2 > self.memo_cap:          # grow (or start) at half full
            cap = 64 if oldcap == 0 else oldcap * 2
            self.memo = <uint64_t*>calloc(cap, sizeof(uint64_t))
            if self.memo == NULL:               # no memory: keep verifying every time
                self.memo = old
                return
            self.memo_cap = cap
            self.memo_n = 0
            for i in range(oldcap):
                if old[i]:
                    self.memo_put(old[i])
            free(old)
        self.memo_put(key)

    cdef inline void memo_put(self, uint64_t key) noexcept:
        cdef size_t mask = self.memo_cap - 1
        cdef size_t h = <size_t>((key * <uint64_t>0x9E3779B97F4A7C15) >> 32) & mask
        while self.memo[h] != 0:
            if self.memo[h] == key:
                return
            h = (h + 1) & mask
        self.memo[h] = key
        self.memo_n += 1

    cdef void memo_drop(self) noexcept:
        free(self.memo)
        self.memo = NULL
        self.memo_cap = self.memo_n = 0

    def _memo_size(self):
        """Frames in the verified-frame memo (tests)."""
        return self.memo_n

    cdef bint grew(self) except -1:
        """Take the file's size again (the writer of another Log allocates it in steps): True
        when more of it is allocated than `cap` said, which then says so. The index files are
        looked at after the segment (their writer grows them first), so their entries cover the
        records of the part seen. No Python call and no allocation: no other thread runs, and
        the mapping stays as the caller found it."""
        cdef uint64_t ino = 0
        cdef int64_t size
        cdef size_t c, n
        if self.data == NULL or self.fpaths is None or self.cap >= (self.ncap & ~(<size_t>7)):
            return False
        size = tl_file_size(<bytes>self.fpaths[0], &ino)
        if size < 0 or ino != self.ino_c:
            return False            # gone or replaced: the segment list is reloaded elsewhere
        c = min(<size_t>size, self.ncap) & ~(<size_t>7)
        if c <= self.cap:
            return False
        self.grew_index()
        self.cap = c
        return True

    cdef int grew_index(self) except -1:
        """Take the index files' sizes again (their writer grows them in steps, ahead of the
        records): entries past what this mapping saw become usable. Like grew(), lets no other
        thread run."""
        cdef int64_t size
        cdef size_t n
        if self.idx != NULL and self.fpaths is not None:
            size = tl_file_size(<bytes>self.fpaths[1], NULL)
            if size > INDEX_HEADER_SIZE:
                n = min(<size_t>(size - INDEX_HEADER_SIZE) // 4,
                        (self.idx_map.size - INDEX_HEADER_SIZE) // 4)
                if n > self.idx_slots:
                    self.idx_slots = n
            size = tl_file_size(<bytes>self.fpaths[2], NULL)
            if size > INDEX_HEADER_SIZE:
                n = min(<size_t>(size - INDEX_HEADER_SIZE) // 8,
                        (self.tix_map.size - INDEX_HEADER_SIZE) // 8)
                if n > self.tix_slots:
                    self.tix_slots = n
        return 0
    cdef Mapping idx_map
    cdef Mapping tix_map
    cdef char* idx              # entry j: u32 position of record base + 16 j; NULL: no index
    cdef char* tix              # entry j: i64 max timestamp up to record base + 64 j, or NULL
    cdef size_t idx_slots
    cdef bint mapping           # ensure() is mapping it (another thread must not unmap it)
    cdef size_t idx_stride      # records per .idx entry: the file's header says (4; older: 16)
    cdef size_t tix_slots
    cdef size_t tix_sorted      # leading .tix entries found never to decrease (of this mapping)
    cdef int64_t tix_pk, tix_pe, tix_pv    # every record of .tix windows tix_pk..tix_pe (the
                                # frames, CRC-checked) has a timestamp <= tix_pv; pk -1: none
    cdef int64_t next_base      # base of the following segment, -1 while this one is last
    cdef bint writable
    cdef public bint index_fresh   # the writer made the index files anew: they must be refilled
    cdef int64_t newest_ts      # the newest timestamp of its records when known for sure (read
                                # from CRC-checked frames, or this writer filled the segment
                                # from empty), else TS_UNKNOWN; never taken from the .tix
    cdef bint any_header        # map it even with a damaged header (salvage reads what it can)
    cdef uint64_t* memo         # verified large frames of this mapping (frame_once), or NULL
    cdef size_t memo_cap, memo_n

    def __cinit__(self):
        self.fd = -1
        self.newest_ts = TS_UNKNOWN
        self.tix_pk = -1
        self.next_base = -1
        # never 0: another thread may look a record up (a division by the stride) while this
        # one maps the segment (data is set before the index files are opened, GIL released)
        self.idx_stride = IDX_STRIDE

    def __dealloc__(self):
        self.memo_drop()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    cdef unmap(self):
        """Let go of the mapping (views and records keep theirs alive); the next use maps the
        file again. A reader's RSS stays bounded as a scan moves on: the frame inflated last
        (compression.pxi) goes too, else every segment a scan passed kept one (up to a
        segment's size each)."""
        self.memo_drop()
        self.zlast = None
        self.map = None
        self.mv = None
        self.data = NULL
        self.idx_map = None
        self.tix_map = None
        self.idx = NULL
        self.tix = NULL
        self.mapped_rw = False

    cdef close_fd(self):
        cdef int fd = self.fd
        self.fd = -1                # first: os.close lets other threads run (one may close too)
        if fd >= 0:
            os.close(fd)

    cdef int ensure(self) except -1:
        """Map the segment (and its indexes) if it is not mapped yet, or map it again writable
        when it became writable after a read-only mapping (views of the old one stay valid).

        Mapping calls the OS, which lets other threads run; one of them may unmap this segment
        meanwhile (its Log's LRU skips a segment being mapped, but the loop makes sure): on
        return it is mapped, and stays so until the caller next lets other threads run."""
        cdef int fd
        while self.data == NULL or (self.writable and not self.mapped_rw):
            self.mapping = True
            try:
                self.data = NULL
                self.idx = NULL
                self.tix = NULL
                try:
                    fd = os.open(self.path, (os.O_RDWR if self.writable else os.O_RDONLY)
                                 | os.O_CLOEXEC)
                except FileNotFoundError:
                    raise CorruptLogError(f"{self.path}: segment file missing; run `tidelog "
                                          f"verify {os.path.dirname(self.path)}`", path=self.path,
                                          position=None, offset=self.base) from None
                self.attach(fd)
            finally:
                self.mapping = False
        return 0

    cdef attach(self, int fd):
        """Map the segment open on fd (which it takes over) and its indexes. Every mapping, the
        writer's and a reader's, first checks the file: its size (positions in a segment are
        u32, so a larger file is refused, never mapped) and its header (magic, version, base,
        CRC; FORMAT.md §2), so no byte of a file that is not this segment is ever read. The
        mapping spans the header's capacity; the file may be shorter (allocated in steps)."""
        cdef Mapping m
        cdef size_t ncap
        try:
            st = os.fstat(fd)
            size = st.st_size
            if size < SEGMENT_HEADER_SIZE:
                raise CorruptLogError(f"{self.path}: segment shorter than its header",
                                      path=self.path, position=0, offset=self.base)
            if size > MAX_SEGMENT_BYTES:
                raise CorruptLogError(
                    f"{self.path}: segment file of {size} bytes, larger than a segment can be "
                    f"({MAX_SEGMENT_BYTES} bytes); run `tidelog verify "
                    f"{os.path.dirname(self.path)}`", path=self.path, position=MAX_SEGMENT_BYTES,
                    offset=self.base)
            ncap = size
            if not self.any_header:
                h = os.pread(fd, SEGMENT_HEADER_SIZE, 0)
                check_segment_header(h, self.base, self.path)
                ncap = nominal_capacity(h, size, self.base, self.path)     # prealloc.pxi
            m = map_fd(fd, ncap, self.writable, self.path)
            self.ino = st.st_ino
            self.ino_c = st.st_ino
            self.ncap = ncap
            self.alloc = tl_allocated_end(fd, size) if self.writable else size
            self.fpaths = segment_fpaths(self.path)
            self.map = m
            self.mv = PyMemoryView_FromObject(self.map)
            self.data = self.map.addr
            self.cap = size & ~(<size_t>7)      # frames are 8-byte aligned: never run past it
            self.mapped_rw = self.writable
        finally:
            if self.writable and self.fd < 0:
                self.fd = fd
            else:                   # (mapped again after unmap(): the writer's fd stays)
                os.close(fd)
        self.open_index()

    cdef open_index(self):
        """Map .idx and .tix when both have a valid header; the writer creates missing ones.
        Each is mapped at its nominal size (entries for the most records the nominal capacity
        can hold: a frame is at least 32 bytes) and allocated in steps like the segment: only
        the entries inside the file (idx_slots, tix_slots) are ever read or written."""
        cdef size_t unit, have
        self.idx = NULL
        self.tix = NULL
        stem = self.path[:len(self.path) - 4]
        maps = []
        slots = []
        for ext, magic, stride, want in (
                (".idx", IDX_MAGIC, IDX_STRIDE,
                 INDEX_HEADER_SIZE + idx_slots_for(self.ncap, IDX_STRIDE) * 4),
                (".tix", TIX_MAGIC, TIX_STRIDE,
                 INDEX_HEADER_SIZE + idx_slots_for(self.ncap, TIX_STRIDE) * 8)):
            unit = 4 if ext == ".idx" else 8
            p = stem + ext
            try:
                fd = os.open(p, (os.O_RDWR | os.O_CREAT if self.writable else os.O_RDONLY)
                             | os.O_CLOEXEC, 0o644)
            except OSError:
                return
            try:
                hdr = os.pread(fd, INDEX_HEADER_SIZE, 0)
                if ext == ".idx" and len(hdr) == INDEX_HEADER_SIZE:
                    # an index written with another stride stays usable (older logs: 16)
                    st = int.from_bytes(hdr[12:16], "little")
                    if st in IDX_STRIDES_READ and st != stride:
                        stride = st
                        want = INDEX_HEADER_SIZE + idx_slots_for(self.ncap, st) * 4
                have = os.fstat(fd).st_size
                # (allocated in steps: any size up to the nominal one; the entries past the
                # records are zeros, which read as "not written")
                good = (hdr == index_header(magic, stride, self.base)
                        and INDEX_HEADER_SIZE <= have <= want)
                if not good and ext == ".idx":
                    stride = IDX_STRIDE
                    want = INDEX_HEADER_SIZE + idx_slots_for(self.ncap, IDX_STRIDE) * 4
                if not good:
                    if not self.writable:
                        return
                    # missing or damaged: start it again, empty, with entries for every record
                    # the allocated part can hold; the writer refills it. If that fails (a
                    # full disk), go on without an index: it is only a hint
                    os.ftruncate(fd, 0)
                    have = index_alloc_bytes(INDEX_HEADER_SIZE + idx_slots_for(
                        min(self.cap, self.alloc), stride) * unit, want)      # prealloc.pxi
                    if tl_preallocate(fd, have):
                        return
                    os.pwrite(fd, index_header(magic, stride, self.base), 0)
                    self.index_fresh = True
                maps.append(map_fd(fd, want, self.writable, p))
                slots.append((have - INDEX_HEADER_SIZE) // unit)
                if ext == ".idx":
                    self.idx_stride = stride
            finally:
                os.close(fd)
        self.idx_slots, self.tix_slots = slots
        self.idx_map, self.tix_map = maps
        self.idx = self.idx_map.addr + INDEX_HEADER_SIZE
        self.tix = self.tix_map.addr + INDEX_HEADER_SIZE
        self.tix_sorted = 0

    cdef inline size_t idx_get(self, size_t j) noexcept:
        """Position of the frame holding record base + stride j per the index, or 0 when the
        entry is unusable: it must lie in the segment, 8-aligned, and the header there must
        claim that record (base_offset <= it < base_offset + count; unchecked: a hint)."""
        cdef size_t p
        cdef int64_t want, b
        if self.idx == NULL or j >= self.idx_slots:
            return 0
        p = tl_load_u32_acquire(self.idx + j * 4)
        if p < SEGMENT_HEADER_SIZE or (p & 7) or p + FRAME_HEADER_SIZE > self.cap:
            return 0
        want = self.base + <int64_t>(j * self.idx_stride)
        b = rd_i64(self.data + p + 8)
        if b > want or want - b >= <int64_t>frame_count(self.data + p):
            return 0
        return p

    cdef Py_ssize_t find(self, int64_t offset, int64_t* at_offset, bint use_index=True) except -2:
        """Byte position of the frame holding `offset` (which must be in this segment): the
        index entry at or below it (O(1)), then a walk of at most a few frames, following
        only lengths and record counts (unchecked). Sets at_offset to `offset` when a frame
        holding it was reached, else to the offset where the segment's data ends."""
        cdef size_t pos = SEGMENT_HEADER_SIZE, p = 0
        cdef int64_t cur = self.base
        cdef int64_t j
        cdef int tries = 0
        cdef uint32_t length, count
        cdef bint hinted = False        # the walk started at an index entry (a hint)
        self.ensure()
        j = (offset - self.base) // <int64_t>self.idx_stride if use_index else 0
        if j >= <int64_t>self.idx_slots and self.idx != NULL and not self.writable:
            self.grew_index()       # the writer of another Log grew the index since
        while j > 0 and tries < 64:          # a damaged entry: try the ones below it
            p = self.idx_get(j)
            if p:
                pos = p
                cur = rd_i64(self.data + p + 8)     # the frame's base (idx_get: it holds base + 4j)
                hinted = True
                break
            j -= 1
            tries += 1
        while True:
            if pos + FRAME_HEADER_SIZE > self.cap:
                break
            length = tl_load_u32_acquire(self.data + pos)
            if length == 0:
                break
            if length < FRAME_HEADER_SIZE or length > self.cap - pos:
                if length >= FRAME_HEADER_SIZE and self.grew():
                    continue                # the writer allocated more since it was mapped
                if hinted:
                    # the index entry led astray (a stale or damaged hint): walk from the start
                    pos = SEGMENT_HEADER_SIZE
                    cur = self.base
                    hinted = False
                    continue
                raise corrupt(self.path, pos, cur, FRAME_BAD_LENGTH)
            count = frame_count(self.data + pos)
            if offset - cur < <int64_t>count:
                at_offset[0] = offset           # this frame holds it
                return pos
            if count == 0:
                if hinted:
                    pos = SEGMENT_HEADER_SIZE
                    cur = self.base
                    hinted = False
                    continue
                raise corrupt(self.path, pos, cur, FRAME_BAD_ATTR)
            pos += align8(length)
            cur += count
        at_offset[0] = cur
        return pos


def _memo_sizes(log):
    """Per segment of `log` (a LogCore), in order: the frames its verified-frame memo holds
    (tests; 0 for an unmapped segment)."""
    cdef Segment s
    return [s.memo_n for s in (<LogCore>log)._segments]
