# Frames: encode and check frames (docs/FORMAT.md §2, format version 2). A frame holds one record
# (single form: v1's layout but for bytes 28..31) or n records in columns (multi form); the C
# interface readers use is FrameLayout / frame_layout / frame_verify / frame_record. Everything
# read from disk is untrusted: no pointer is derived before the bounds it rests on are checked.
from libc.stdint cimport uint16_t

cdef enum:
    FORMAT_VERSION = 2
    SEGMENT_HEADER_SIZE = 64      # bytes before the first frame of a segment
    FRAME_HEADER_SIZE = 32        # length, crc, base offset, timestamp, key length|count, attrs, vpad
    FRAME_ALIGN = 8               # frames and values start 8-byte aligned (numpy views)
    INDEX_HEADER_SIZE = 64        # header of .idx / .tix files
    IDX_STRIDE = 4                # one .idx entry (u32 position) per 4 records in new index
                                  # files: O(1) seek, a walk of < 4 frames (older files: 16)
    TIX_STRIDE = 64               # one .tix entry (i64 running max timestamp) per 64 records
    CONTROL_SIZE = 4096           # the control page
    NOGIL_COPY_BYTES = 1 << 20    # batches larger than this copy with the GIL released
    PWRITE_MIN_BYTES = 8 << 10    # batches at least this large are written with pwrite (measured)
    STAGE_BYTES = 4 << 20         # ... framed in a staging buffer of this size at a time
    FRAME_LIMIT = 1 << 20         # F: a multi-form frame holds at most this many bytes
    MIN_RECORD_BYTES = 8          # a segment holds at most (capacity - 64) / 8 records (R)
    PRETOUCH_WINDOW = 1 << 20     # the pretoucher keeps this many bytes ahead of the writer
    PRETOUCH_CHUNK = 128 << 10    # ... populating this many per call
    PRETOUCH_MIN_RATE = 64 << 20  # ... for a writer of at least this many bytes/s (tl_toucher.h)

# Positions inside a segment (of frames in .idx entries, of values in a RecordBatch) are u32: no
# segment may be larger than this (FORMAT.md §2). A writer never makes one; a reader refuses one.
cdef int64_t MAX_SEGMENT_BYTES = (1 << 32) - 4096
# the largest segment base a writer uses: a segment's records (at most R < 2**30) then stay
# below 2**63 - 1, so offsets never wrap (no log gets there by appending: 2**62 records)
cdef int64_t MAX_BASE_OFFSET = 1 << 62

# control page field positions (FORMAT.md §1)
cdef enum:
    CTL_FLAGS = 12
    CTL_START = 16
    CTL_END = 24
    CTL_DURABLE = 32
    CTL_ACTIVE_BASE = 40
    CTL_ACTIVE_POS = 48
    CTL_SEGMENT_BYTES = 56
    CTL_GENERATION = 64
    CTL_WAKE_END = 72             # wake word pair for end_offset: u32 sequence (the futex word),
                                  # then u32 sleepers flag (nonzero: someone may sleep on it)
    CTL_WAKE_DURABLE = 80         # the same for durable_offset
    CTL_FLAG_CLEAN = 1

# frame check results
cdef enum:
    FRAME_OK = 0
    FRAME_END = 1          # length 0: no frame here
    # (never -1 or -2: functions declared `except -1` / `except -2` return these codes, and
    # Cython takes those two values for "an exception is set" - a missing one crashed a read)
    FRAME_BAD_LENGTH = -11
    FRAME_BAD_KEY = -12
    FRAME_BAD_CRC = -13
    FRAME_BAD_OFFSET = -14
    FRAME_BAD_ATTR = -15   # rule 2: reserved attribute bits, a codec, a bad form or vpad
    FRAME_BAD_LAYOUT = -16 # rules 3 and 5: columns out of the frame or not consistent
    FRAME_BAD_GROUP = -17  # rule 7: a frame with MORE not followed by a valid frame
    FRAME_BAD_CODEC = -18  # a compressed frame that does not decompress to what it says
    FRAME_BAD_COUNT = -19  # rule 8: the frame takes its segment past R records

# frame attributes (header bytes 28..29; FORMAT.md §2)
cdef enum:
    ATTR_CODEC = 0x7               # compression codec: 0 = none, 1 = zstd, 2 = lz4
    CODEC_MAX = 2                  # (compression.pxi: compressed frames)
    ATTR_MULTI = 1 << 3            # multi form: count at 24, columns
    ATTR_TS_SHARED = 1 << 4        # one timestamp (the header's) for every record
    ATTR_UNIFORM = 1 << 5          # every value has the same size: no value offsets column
    ATTR_KEYS = 1 << 6             # key columns present
    ATTR_KEY_NULLS = 1 << 7        # key validity bitmap present (some keys absent)
    ATTR_HEADERS = 1 << 8          # header columns present (layout reserved; never written yet)
    ATTR_MORE = 1 << 9             # another frame of the same atomic group follows
    ATTR_KNOWN = 0x3FF             # bits 10..15 must be 0
    VPAD_MAX = 56                  # vpad: 0..56, a multiple of 8
    VALUES_ALIGN = 64              # the writer starts multi-form values 64-byte aligned

ctypedef struct FrameLayout:
    uint32_t length, count         # count = 1 in single form
    uint16_t attrs
    int64_t base, ts               # base_offset; header timestamp (shared, or the max)
    int32_t klen1                  # single form: key length (-1: no key); multi: -1
    uint32_t usize                 # UNIFORM: every value's size
    uint32_t nheaders              # H (0 without HEADERS)
    # column positions relative to the frame start, 0 = absent (c_values always set):
    uint32_t c_ts, c_voff, c_kvalid, c_koff, c_hidx, c_hnoff, c_hvoff, c_hname, c_hval
    uint32_t c_keys, c_values

CONTROL_MAGIC = b"TDLGCTL\0"
SEGMENT_MAGIC = b"TDLGSEG\0"
IDX_MAGIC = b"TDLGIDX\0"
TIX_MAGIC = b"TDLGTIX\0"

cdef inline size_t align8(size_t n) noexcept nogil:
    return (n + 7) & ~(<size_t>7)

cdef inline size_t key_area(int32_t klen) noexcept nogil:
    return 0 if klen < 0 else align8(<size_t>klen)

cdef inline uint32_t rd_u32(const char* p) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, p, 4)
    return v

cdef inline int32_t rd_i32(const char* p) noexcept nogil:
    cdef int32_t v
    memcpy(&v, p, 4)
    return v

cdef inline int64_t rd_i64(const char* p) noexcept nogil:
    cdef int64_t v
    memcpy(&v, p, 8)
    return v

cdef inline uint16_t rd_u16(const char* p) noexcept nogil:
    cdef uint16_t v
    memcpy(&v, p, 2)
    return v

cdef inline void wr_u32(char* p, uint32_t v) noexcept nogil:
    memcpy(p, &v, 4)

cdef inline void wr_i32(char* p, int32_t v) noexcept nogil:
    memcpy(p, &v, 4)

cdef inline void wr_i64(char* p, int64_t v) noexcept nogil:
    memcpy(p, &v, 8)

cdef inline uint32_t frame_crc(const char* f, uint32_t length) noexcept nogil:
    """CRC32C over the length word, then bytes 8..length-1 of the frame."""
    return tl_crc32c_frame(length, f + 8, length - 8)


cdef inline uint16_t single_attrs(int32_t klen) noexcept nogil:
    return ATTR_TS_SHARED | ATTR_UNIFORM | (ATTR_KEYS if klen >= 0 else 0)


cdef inline void frame_write(char* f, int64_t offset, int64_t ts, const char* key, int32_t klen,
                             const char* val, size_t vlen, uint16_t more, bint publish) noexcept nogil:
    """Write one single-form frame at f (more: ATTR_MORE when a frame of its group follows).
    With publish, store its length last (release); else leave it 0."""
    cdef size_t ka = key_area(klen)
    cdef uint32_t length = <uint32_t>(FRAME_HEADER_SIZE + ka + vlen)
    cdef uint64_t zero = 0
    wr_i64(f + 8, offset)
    wr_i64(f + 16, ts)
    wr_i32(f + 24, klen)
    wr_u32(f + 28, <uint32_t>(single_attrs(klen) | more))       # attributes, vpad 0
    # padding is zero: clear the last word of the key area and of the frame, then copy over them
    if klen > 0:
        memcpy(f + FRAME_HEADER_SIZE + ka - 8, &zero, 8)
        memcpy(f + FRAME_HEADER_SIZE, key, <size_t>klen)
    if vlen:
        memcpy(f + align8(length) - 8, &zero, 8)
        memcpy(f + FRAME_HEADER_SIZE + ka, val, vlen)
    wr_u32(f + 4, frame_crc(f, length))
    if publish:
        tl_store_u32_release(f, length)
    else:
        wr_u32(f, 0)            # (a staging buffer holds old bytes there) published later


cdef inline uint32_t frame_count(const char* f) noexcept nogil:
    """Records of the frame at f (header only, unchecked: for walks over checked frames)."""
    return rd_u32(f + 24) if rd_u16(f + 28) & ATTR_MULTI else 1


cdef int frame_layout(const char* f, size_t room, FrameLayout* L) noexcept nogil:
    """FORMAT.md rules 1-3 on the frame at f, with `room` bytes before the end of what may be
    read: FRAME_OK (L filled), FRAME_END (length 0 or no header fits) or a FRAME_BAD_* code.
    Reads only header words and C4[n], C5[n], C6[H], C7[H] after checking they lie inside the
    frame. No CRC. All sums in 64 bits: counts from disk cannot wrap them."""
    cdef uint32_t length
    cdef uint16_t attrs, vpad
    cdef uint64_t n, p, end, kb, vb, hn, hv
    cdef int32_t klen
    if room < FRAME_HEADER_SIZE:
        return FRAME_END            # no frame fits here: the writer rolled before this point
    length = tl_load_u32_acquire(f)
    if length == 0:
        return FRAME_END
    if length < FRAME_HEADER_SIZE or <size_t>length > room:
        return FRAME_BAD_LENGTH
    memset(L, 0, sizeof(FrameLayout))
    end = length
    attrs = rd_u16(f + 28)
    vpad = rd_u16(f + 30)
    L.length = length
    L.attrs = attrs
    L.base = rd_i64(f + 8)
    L.ts = rd_i64(f + 16)
    L.klen1 = -1
    if (attrs & ~(<uint16_t>ATTR_KNOWN)) or (attrs & ATTR_CODEC) > CODEC_MAX or vpad > VPAD_MAX or (vpad & 7):
        return FRAME_BAD_ATTR
    if (attrs & ATTR_CODEC) and vpad:
        return FRAME_BAD_ATTR
    if (attrs & ATTR_KEY_NULLS) and not (attrs & ATTR_KEYS):
        return FRAME_BAD_ATTR
    if attrs & ATTR_MULTI:
        n = rd_u32(f + 24)
        if n == 0:
            return FRAME_BAD_ATTR
    else:
        klen = rd_i32(f + 24)
        if ((attrs & (ATTR_TS_SHARED | ATTR_UNIFORM)) != (ATTR_TS_SHARED | ATTR_UNIFORM)
                or (attrs & ATTR_KEY_NULLS)):
            return FRAME_BAD_ATTR
        if klen < -1 or ((klen >= 0) != ((attrs & ATTR_KEYS) != 0)):
            return FRAME_BAD_KEY
        n = 1
        L.klen1 = klen
    L.count = <uint32_t>n
    if attrs & ATTR_CODEC:
        # compressed (FORMAT.md §2): the header, u32 inner length, u32 zero, codec bytes. The
        # columns are the inner frame's: seg_inflate (compression.pxi) checks them
        if length < FRAME_HEADER_SIZE + 8 or rd_u32(f + FRAME_HEADER_SIZE + 4) != 0:
            return FRAME_BAD_LAYOUT
        if rd_u32(f + FRAME_HEADER_SIZE) < FRAME_HEADER_SIZE:
            return FRAME_BAD_LAYOUT
        return FRAME_OK
    p = FRAME_HEADER_SIZE
    if not (attrs & ATTR_TS_SHARED):
        L.c_ts = <uint32_t>p
        p += 8 * n
    if not (attrs & ATTR_UNIFORM):
        L.c_voff = <uint32_t>p
        p += align8(4 * (n + 1))
    if attrs & ATTR_KEY_NULLS:
        L.c_kvalid = <uint32_t>p
        p += align8((n + 7) >> 3)
    if (attrs & ATTR_KEYS) and (attrs & ATTR_MULTI):
        L.c_koff = <uint32_t>p
        p += align8(4 * (n + 1))
    if p > end:
        return FRAME_BAD_LAYOUT
    if attrs & ATTR_HEADERS:
        L.c_hidx = <uint32_t>p
        p += align8(4 * (n + 1))
        if p > end:
            return FRAME_BAD_LAYOUT
        hn = rd_u32(f + L.c_hidx + 4 * n)           # H
        L.nheaders = <uint32_t>hn
        L.c_hnoff = <uint32_t>p
        p += align8(4 * (hn + 1))
        L.c_hvoff = <uint32_t>p
        p += align8(4 * (hn + 1))
        if p > end:
            return FRAME_BAD_LAYOUT
        L.c_hname = <uint32_t>p
        p += align8(rd_u32(f + L.c_hnoff + 4 * hn))
        if p > end:
            return FRAME_BAD_LAYOUT
        L.c_hval = <uint32_t>p
        p += align8(rd_u32(f + L.c_hvoff + 4 * hn))
        if p > end:
            return FRAME_BAD_LAYOUT
    if attrs & ATTR_KEYS:
        L.c_keys = <uint32_t>p
        kb = rd_u32(f + L.c_koff + 4 * n) if attrs & ATTR_MULTI else <uint64_t>L.klen1
        p += align8(kb)
        if p > end:
            return FRAME_BAD_KEY if not (attrs & ATTR_MULTI) else FRAME_BAD_LAYOUT
    p += vpad
    if p > end:
        return FRAME_BAD_LAYOUT
    L.c_values = <uint32_t>p
    vb = end - p
    if attrs & ATTR_UNIFORM:
        if vb % n:
            return FRAME_BAD_LAYOUT
        L.usize = <uint32_t>(vb // n)
    elif rd_u32(f + L.c_voff + 4 * n) != vb:
        return FRAME_BAD_LAYOUT                    # the values end exactly at `length`
    return FRAME_OK


cdef inline bint offsets_ok(const char* c, uint64_t n) noexcept nogil:
    """u32 offsets c[0..n]: start at 0 and never decrease (their end is checked by the layout)."""
    cdef uint64_t i
    cdef uint32_t prev = 0, x
    if rd_u32(c) != 0:
        return False
    for i in range(1, n + 1):
        x = rd_u32(c + 4 * i)
        if x < prev:
            return False
        prev = x
    return True


cdef int frame_columns(const char* f, const FrameLayout* L) noexcept nogil:
    """FORMAT.md rule 5 on a frame that passed frame_layout: offsets columns start at 0 and never
    decrease; key bitmap bits >= n are 0 and an absent key has an empty range; without
    TS_SHARED the header timestamp is the largest of the timestamps column."""
    cdef uint64_t n = L.count, i, nb
    cdef int64_t mx, t
    cdef uint8_t b
    if (not (L.attrs & ATTR_MULTI) and not (L.attrs & ATTR_HEADERS)) or (L.attrs & ATTR_CODEC):
        return FRAME_OK             # single form: nothing more to check (compressed: the inner
                                    # frame's columns are checked when it is inflated)
    if L.c_voff and not offsets_ok(f + L.c_voff, n):
        return FRAME_BAD_LAYOUT
    if L.c_koff and not offsets_ok(f + L.c_koff, n):
        return FRAME_BAD_LAYOUT
    if L.c_hidx and not (offsets_ok(f + L.c_hidx, n) and offsets_ok(f + L.c_hnoff, L.nheaders)
                         and offsets_ok(f + L.c_hvoff, L.nheaders)):
        return FRAME_BAD_LAYOUT
    if L.c_kvalid:
        nb = (n + 7) >> 3
        if n & 7:
            b = <uint8_t>f[L.c_kvalid + nb - 1]
            if b >> (n & 7):
                return FRAME_BAD_LAYOUT
        for i in range(n):
            if not ((<uint8_t>f[L.c_kvalid + (i >> 3)] >> (i & 7)) & 1):
                if rd_u32(f + L.c_koff + 4 * i) != rd_u32(f + L.c_koff + 4 * i + 4):
                    return FRAME_BAD_LAYOUT
    if L.c_ts:
        mx = rd_i64(f + L.c_ts)
        for i in range(1, n):
            t = rd_i64(f + L.c_ts + 8 * i)
            if t > mx:
                mx = t
        if mx != L.ts:
            return FRAME_BAD_LAYOUT
    return FRAME_OK


cdef int frame_verify(const char* f, size_t room, FrameLayout* L) noexcept nogil:
    """frame_layout, then the CRC (rule 4), then the columns (rule 5): a frame that passes hands
    out only pointers inside itself (frame_record), even with a forged CRC."""
    cdef int rc = frame_layout(f, room, L)
    if rc != FRAME_OK:
        return rc
    if frame_crc(f, L.length) != rd_u32(f + 4):
        return FRAME_BAD_CRC
    return frame_columns(f, L)


cdef inline void frame_record(const char* f, const FrameLayout* L, uint32_t i, int64_t* ts,
                              const char** key, int32_t* klen, const char** val,
                              size_t* vlen) noexcept nogil:
    """Record i (< L.count) of a verified frame, O(1). klen -1 (key NULL): no key."""
    cdef uint32_t a, b
    ts[0] = rd_i64(f + L.c_ts + 8 * <size_t>i) if L.c_ts else L.ts
    if L.attrs & ATTR_UNIFORM:
        val[0] = f + L.c_values + <size_t>i * L.usize
        vlen[0] = L.usize
    else:
        a = rd_u32(f + L.c_voff + 4 * <size_t>i)
        b = rd_u32(f + L.c_voff + 4 * <size_t>i + 4)
        val[0] = f + L.c_values + a
        vlen[0] = b - a
    if not (L.attrs & ATTR_KEYS):
        key[0] = NULL
        klen[0] = -1
    elif not (L.attrs & ATTR_MULTI):
        key[0] = f + L.c_keys
        klen[0] = L.klen1
    elif L.c_kvalid and not ((<uint8_t>f[L.c_kvalid + (i >> 3)] >> (i & 7)) & 1):
        key[0] = NULL
        klen[0] = -1
    else:
        a = rd_u32(f + L.c_koff + 4 * <size_t>i)
        b = rd_u32(f + L.c_koff + 4 * <size_t>i + 4)
        key[0] = f + L.c_keys + a
        klen[0] = <int32_t>(b - a)


cdef inline int frame_shape(const char* data, size_t cap, size_t pos, int64_t expect,
                            uint32_t* out_len) noexcept nogil:
    """FORMAT.md rules 1-3 for the frame at data+pos and its base offset (expect < 0: any
    offset); no CRC."""
    cdef FrameLayout L
    cdef int rc
    if pos + FRAME_HEADER_SIZE > cap:
        return FRAME_END
    rc = frame_layout(data + pos, cap - pos, &L)
    if rc != FRAME_OK:
        return rc
    if expect >= 0 and L.base != expect:
        return FRAME_BAD_OFFSET
    out_len[0] = L.length
    return FRAME_OK


cdef inline int frame_check(const char* data, size_t cap, size_t pos, int64_t expect,
                            uint32_t* out_len) noexcept nogil:
    """The frame at data+pos is valid (FORMAT.md rules 1-5) and its base offset is `expect`
    (< 0: any offset)."""
    cdef FrameLayout L
    cdef int rc
    if pos + FRAME_HEADER_SIZE > cap:
        return FRAME_END
    rc = frame_layout(data + pos, cap - pos, &L)
    if rc != FRAME_OK:
        return rc
    if expect >= 0 and L.base != expect:
        return FRAME_BAD_OFFSET
    if frame_crc(data + pos, L.length) != rd_u32(data + pos + 4):
        return FRAME_BAD_CRC
    rc = frame_columns(data + pos, &L)
    if rc == FRAME_OK:
        out_len[0] = L.length
    return rc


FRAME_PROBLEMS = {
    FRAME_BAD_LENGTH: "frame length out of bounds",
    FRAME_BAD_KEY: "key length out of bounds",
    FRAME_BAD_CRC: "CRC32C mismatch",
    FRAME_BAD_OFFSET: "unexpected offset",
    FRAME_END: "no record where one was expected",
    FRAME_BAD_ATTR: "bad frame attributes",
    FRAME_BAD_LAYOUT: "frame columns out of bounds or inconsistent",
    FRAME_BAD_GROUP: "incomplete batch (a frame announces a follower that is missing or damaged)",
    FRAME_BAD_CODEC: "compressed frame does not decompress to the frame its header describes",
    FRAME_BAD_COUNT: "more records than a segment may hold",
}

cdef object format_version_error(str path, version):
    """The FormatVersionError for a log (or one of its files) of another format version."""
    if version < FORMAT_VERSION:
        return FormatVersionError(
            f"{path}: log format version {version}; this tidelog reads version {FORMAT_VERSION} "
            f"only: the log was made by a pre-release of tidelog (no release carried version "
            f"{version}) and must be re-created")
    return FormatVersionError(f"{path}: log format version {version}; this tidelog reads "
                              f"version {FORMAT_VERSION}: upgrade tidelog")


cdef object corrupt(str path, size_t pos, int64_t offset, int rc):
    return CorruptLogError(
        f"{path}: damaged record at byte {pos} (offset {offset}): {FRAME_PROBLEMS.get(rc, rc)}; "
        f"run `tidelog verify {os.path.dirname(path)}`",
        path=path, position=pos, offset=offset)
