# Frames: encode and check one record frame (docs/FORMAT.md §2). On-disk lengths are untrusted.

cdef enum:
    FORMAT_VERSION = 1
    SEGMENT_HEADER_SIZE = 64      # bytes before the first frame of a segment
    FRAME_HEADER_SIZE = 32        # length, crc, offset, timestamp, key length, batch count
    FRAME_ALIGN = 8               # frames and values start 8-byte aligned (numpy views)
    INDEX_HEADER_SIZE = 64        # header of .idx / .tix files
    IDX_STRIDE = 4                # one .idx entry (u32 position) per 4 records in new index
                                  # files: O(1) seek, a walk of < 4 frames (older files: 16)
    TIX_STRIDE = 64               # one .tix entry (i64 running max timestamp) per 64 records
    CONTROL_SIZE = 4096           # the control page
    NOGIL_COPY_BYTES = 1 << 20    # batches larger than this copy with the GIL released
    PWRITE_MIN_BYTES = 8 << 10    # batches at least this large are written with pwrite (measured)
    STAGE_BYTES = 4 << 20         # ... framed in a staging buffer of this size at a time
    PRETOUCH_WINDOW = 1 << 20     # the pretoucher keeps this many bytes ahead of the writer
    PRETOUCH_CHUNK = 128 << 10    # ... populating this many per call
    PRETOUCH_MIN_RATE = 64 << 20  # ... for a writer of at least this many bytes/s (tl_toucher.h)

# Positions inside a segment (of frames in .idx entries, of values in a RecordBatch) are u32: no
# segment may be larger than this (FORMAT.md §2). A writer never makes one; a reader refuses one.
cdef int64_t MAX_SEGMENT_BYTES = (1 << 32) - 4096

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
    FRAME_BAD_LENGTH = -1
    FRAME_BAD_KEY = -2
    FRAME_BAD_CRC = -3
    FRAME_BAD_OFFSET = -4

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

cdef inline void wr_u32(char* p, uint32_t v) noexcept nogil:
    memcpy(p, &v, 4)

cdef inline void wr_i32(char* p, int32_t v) noexcept nogil:
    memcpy(p, &v, 4)

cdef inline void wr_i64(char* p, int64_t v) noexcept nogil:
    memcpy(p, &v, 8)

cdef inline uint32_t frame_crc(const char* f, uint32_t length) noexcept nogil:
    """CRC32C over the length word, then bytes 8..length-1 of the frame."""
    return tl_crc32c_frame(length, f + 8, length - 8)

cdef inline void frame_write(char* f, int64_t offset, int64_t ts, const char* key, int32_t klen,
                             const char* val, size_t vlen, uint32_t batch, bint publish) noexcept nogil:
    """Write one frame at f. With publish, store its length last (release); else leave it 0."""
    cdef size_t ka = key_area(klen)
    cdef uint32_t length = <uint32_t>(FRAME_HEADER_SIZE + ka + vlen)
    cdef uint64_t zero = 0
    wr_i64(f + 8, offset)
    wr_i64(f + 16, ts)
    wr_i32(f + 24, klen)
    wr_u32(f + 28, batch)
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

cdef inline int frame_shape(const char* data, size_t cap, size_t pos, int64_t expect,
                            uint32_t* out_len) noexcept nogil:
    """FORMAT.md rules 1, 2 and 4 for the frame at data+pos (expect < 0: any offset); no CRC."""
    cdef uint32_t length
    cdef int32_t klen
    if pos + FRAME_HEADER_SIZE > cap:
        return FRAME_END            # no frame fits here: the writer rolled before this point
    length = tl_load_u32_acquire(data + pos)
    if length == 0:
        return FRAME_END
    if length < FRAME_HEADER_SIZE or <size_t>length > cap - pos:
        return FRAME_BAD_LENGTH
    klen = rd_i32(data + pos + 24)
    if klen < -1 or FRAME_HEADER_SIZE + key_area(klen) > length:
        return FRAME_BAD_KEY
    if expect >= 0 and rd_i64(data + pos + 8) != expect:
        return FRAME_BAD_OFFSET
    out_len[0] = length
    return FRAME_OK

cdef inline int frame_check(const char* data, size_t cap, size_t pos, int64_t expect,
                            uint32_t* out_len) noexcept nogil:
    """Check the frame at data+pos against FORMAT.md rules 1-4 (expect < 0: any offset)."""
    cdef int rc = frame_shape(data, cap, pos, expect, out_len)
    if rc == FRAME_OK and frame_crc(data + pos, out_len[0]) != rd_u32(data + pos + 4):
        return FRAME_BAD_CRC
    return rc

FRAME_PROBLEMS = {
    FRAME_BAD_LENGTH: "frame length out of bounds",
    FRAME_BAD_KEY: "key length out of bounds",
    FRAME_BAD_CRC: "CRC32C mismatch",
    FRAME_BAD_OFFSET: "unexpected offset",
    FRAME_END: "no record where one was expected",
}

cdef object corrupt(str path, size_t pos, int64_t offset, int rc):
    return CorruptLogError(
        f"{path}: damaged record at byte {pos} (offset {offset}): {FRAME_PROBLEMS.get(rc, rc)}; "
        f"run `tidelog verify {os.path.dirname(path)}`",
        path=path, position=pos, offset=offset)
