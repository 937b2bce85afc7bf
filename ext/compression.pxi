# Compressed frames (FORMAT.md §2 "Compressed frames"; issue 14): the writer's framing of a
# group with compression on (write_spans_z: each frame built whole in a scratch buffer, then
# compressed when it is at least Z_MIN_BYTES and that makes it smaller), the codec setting
# (codec_setup: the control page's CTL_CODEC) and the readers' inflate (seg_inflate: one
# decompression per frame into a bytes object a ZFrame owns, checked whole - rules 1-5 on the
# inner frame and its agreement with the outer header - before any record of it is handed out).
# Writes LogCore._codec, _zcompress and Segment.zlast only. The codec functions come from
# tidelog.codecs (the only place that imports zstandard / lz4); they release the GIL while
# they run, so other threads may run during a compress (the writer lock is held: no other
# writer, no close) or a decompress (a reader's; the ZFrame is made after it returns).
cdef extern from "Python.h":
    object PyMemoryView_FromMemory(char* mem, Py_ssize_t size, int flags)
    int PyBUF_READ
from tidelog import codecs as _codecs

cdef enum:
    Z_MIN_BYTES = 512       # frames shorter than this stay uncompressed (a record of a few
                            # hundred bytes compresses poorly alone and costs a codec call)
    Z_PREFIX = 8            # after the outer header: u32 inner length, u32 zero
    CTL_CODEC = 88          # control page: CODEC new frames get (FORMAT.md §1)


@cython.final
@cython.no_gc
cdef class ZFrame:
    """A compressed frame, decompressed: the inner frame in `buf` (a bytes object, which the
    records and batches made from it keep alive through `mv`), verified, layout L."""
    cdef object buf
    cdef object mv
    cdef const char* f
    cdef FrameLayout L
    cdef size_t pos             # where the outer frame lies in its segment
    cdef uint32_t length, crc   # the outer frame's (a cache key with pos)


cdef ZFrame seg_inflate(Segment seg, size_t pos, const FrameLayout* L):
    """The compressed frame at pos of seg (layout L, which passed frame_verify: its CRC over
    the stored bytes holds), decompressed and checked. CorruptLogError when it does not
    decompress to a valid frame that agrees with its header; MissingCodecError when the codec's
    package is missing. The last one inflated per segment is kept (a cursor reads a frame's
    records one by one)."""
    cdef ZFrame z = seg.zlast
    cdef const char* f
    cdef uint32_t crc, raw
    cdef int rc
    # the mapping first, held to the end, and f from it: the Python calls below (the codec
    # lookup, the codec) let other threads run, and one may unmap seg (a Log's LRU) - f from
    # seg.data then pointed at unmapped memory (a crash, or a healthy frame called damaged)
    mv = seg.mv
    if mv is None:
        seg.ensure()            # unmapped since the caller's check: the positions still hold
        mv = seg.mv
    f = <const char*>PyMemoryView_GET_BUFFER(mv).buf + pos
    crc = rd_u32(f + 4)
    if z is not None and z.pos == pos and z.length == L.length and z.crc == crc:
        return z
    dec = _codecs.decompressor(L.attrs & ATTR_CODEC)
    raw = rd_u32(f + FRAME_HEADER_SIZE)
    # the inner length sizes the codec's output buffer: a forged one (4 GiB under a valid CRC)
    # must not allocate that much. The writer compresses only a frame it planned to fit the
    # segment uncompressed, so no true inner frame is longer than the segment's capacity
    if <size_t>raw > max(seg.ncap, seg.cap) - SEGMENT_HEADER_SIZE:
        raise corrupt(seg.path, pos, L.base, FRAME_BAD_CODEC)
    try:
        buf = dec(tl_subview(mv, <char*>f + FRAME_HEADER_SIZE + Z_PREFIX,
                             L.length - FRAME_HEADER_SIZE - Z_PREFIX), raw)
    except MemoryError:
        raise
    except Exception:
        raise corrupt(seg.path, pos, L.base, FRAME_BAD_CODEC) from None
    if type(buf) is not bytes:
        buf = bytes(buf)
    z = ZFrame.__new__(ZFrame)
    z.buf = buf
    z.f = PyBytes_AS_STRING(buf)
    rc = FRAME_OK
    if <size_t>PyBytes_GET_SIZE(buf) != raw:
        rc = FRAME_BAD_CODEC
    else:
        rc = frame_verify(z.f, raw, &z.L)
        if rc == FRAME_OK and not z_agrees(&z.L, L, raw):
            rc = FRAME_BAD_CODEC
        elif rc != FRAME_OK:
            rc = FRAME_BAD_CODEC
    if rc != FRAME_OK:
        raise corrupt(seg.path, pos, L.base, rc)
    z.mv = memoryview(buf)
    z.pos = pos
    z.length = L.length
    z.crc = crc
    seg.zlast = z
    return z


cdef inline bint z_agrees(const FrameLayout* inner, const FrameLayout* outer,
                          uint32_t raw) noexcept:
    """The inner frame is what the outer header says (FORMAT.md rule 2z): its length, no
    codec, the same attributes otherwise, base offset, timestamp and count / key length."""
    return (inner.length == raw and not (inner.attrs & ATTR_CODEC)
            and inner.attrs == (outer.attrs & ~(<uint16_t>ATTR_CODEC))
            and inner.base == outer.base and inner.ts == outer.ts
            and inner.count == outer.count and inner.klen1 == outer.klen1)


cdef object codec_setup(LogCore self, object compression):
    """At a writer's open: the codec new frames get - `compression` ("zstd", "lz4", "none"), or
    None: the log's own setting (the control page's CTL_CODEC; 0 for a new log). A choice
    differs from the stored one is stored (and msynced) before the first append."""
    cdef int64_t stored = ctl_get(self._ctl, CTL_CODEC)
    cdef int cid
    if compression is None:
        # (a value no codec has - damage, 3..7 included - is no preference: none, as for 8+)
        cid = <int>stored if 0 <= stored <= CODEC_MAX else 0
    else:
        cid = _codecs.codec_id(compression)
    self._zcompress = _codecs.compressor(cid) if cid else None     # MissingCodecError
    _codecs.decompressor(cid) if cid else None
    self._codec = cid
    if cid != stored:
        ctl_set(self._ctl, CTL_CODEC, cid)
        if msync(self._ctl, CONTROL_SIZE, MS_SYNC) != 0:
            raise_oserror(errno, self.path)
    return None


cdef int write_spans_z(LogCore self, Item* items, Span* spans, Py_ssize_t ns, uint16_t attrs,
                       bint contig) except -1:
    """write_spans with compression on: each frame is built in a scratch buffer (vpad for
    position 0: values 64-aligned in the decompressed buffer), compressed when it is at least
    Z_MIN_BYTES long and the result is smaller (else copied as it is), into the staging buffer;
    runs of it written with pwrite (or copied into the mapping when small) and the group
    published as write_spans does (first frame's length last). A compressed frame is never
    longer than the frame it replaces, so the planned sizes (spans[].ub) still bound it."""
    cdef int fd = self._active.fd
    cdef int err = 0
    cdef Py_ssize_t s, nrec = 0, c
    cdef size_t pos = self._wpos, ub = 0, big = 0, at = 0, out_len, clen
    cdef uint32_t first = 0, length
    cdef uint16_t more, fattrs
    cdef int64_t off = self._next, mx
    cdef Item* it
    cdef char* scratch = NULL
    cdef char* o
    for s in range(ns):
        ub += spans[s].ub
        big = max(big, spans[s].ub)
        nrec += spans[s].k
    err = index_cover_err(self._active, self._next - self._base + nrec +
                          <int64_t>((self._whard - min(self._whard, self._wpos + ub))
                                    // FRAME_HEADER_SIZE))
    if err:
        raise_oserror(err, self._active.path[:len(self._active.path) - 4] + ".idx")
    if max(big, <size_t>STAGE_BYTES) > self._scap:
        grow_stage(self, max(big, <size_t>STAGE_BYTES))
    scratch = <char*>malloc(big + 8)
    if scratch == NULL:
        raise MemoryError()
    zc = self._zcompress
    try:
        for s in range(ns):
            it = items + spans[s].i
            more = 0 if s == ns - 1 else ATTR_MORE
            if spans[s].k == 1 and it.hn:
                length = frame_write_hdr(scratch, off, it, more, True)
            elif spans[s].k == 1:
                frame_write(scratch, off, it.ts, it.k, it.klen, it.v, it.vlen, more, True)
                length = <uint32_t>(FRAME_HEADER_SIZE + key_area(it.klen) + it.vlen)
            else:
                fattrs = batch_attrs(it, spans[s].k) | more
                length = build_multi(scratch, 0, it, spans[s].k, off, fattrs, contig, True)
            if at + spans[s].ub > self._scap:       # flush what is staged (a whole frame fits)
                z_flush(self, fd, pos, at)
                pos += at
                at = 0
            o = self._stage + at
            out_len = length
            zb = None
            if length >= Z_MIN_BYTES:
                zb = zc(PyMemoryView_FromMemory(scratch, length, PyBUF_READ))
                clen = <size_t>PyBytes_GET_SIZE(zb)
                if FRAME_HEADER_SIZE + Z_PREFIX + clen >= length:
                    zb = None           # incompressible: stored as it is
            mx = rd_i64(scratch + 16)
            if zb is None:
                memcpy(o, scratch, align8(length))
            else:
                out_len = FRAME_HEADER_SIZE + Z_PREFIX + clen
                memcpy(o + 8, scratch + 8, 20)          # base, timestamp, count / key length
                wr_u32(o + 28, <uint32_t>(rd_u16(scratch + 28) | <uint16_t>self._codec))  # vpad 0
                wr_u32(o + FRAME_HEADER_SIZE, length)
                wr_u32(o + FRAME_HEADER_SIZE + 4, 0)
                memcpy(o + FRAME_HEADER_SIZE + Z_PREFIX, PyBytes_AS_STRING(zb), clen)
                put_zero_to8(o, out_len)
                wr_u32(o, <uint32_t>out_len)
                wr_u32(o + 4, frame_crc(o, <uint32_t>out_len))
            if s == 0:
                first = <uint32_t>out_len
                wr_u32(o, 0)                            # published last
            # index entries: a compressed frame's records by its header timestamp (its max),
            # as an index rebuild sees them (it reads headers only)
            if zb is None:
                index_frame(self, pos + at, off, it, spans[s].k, attrs)
            else:
                for c in range(spans[s].k):
                    index_note(self, pos + at, off + c, mx)
            off += spans[s].k
            at += align8(out_len)
        z_flush(self, fd, pos, at)
        pos += at
    except BaseException:
        # nothing is published; clear what may have reached the file (stale frames must never
        # follow the next append)
        memset(self._w + self._wpos, 0, pos - self._wpos)
        raise
    finally:
        free(scratch)
    publish_group(self, first, pos - self._wpos, off - self._next)
    return 0


cdef int z_flush(LogCore self, int fd, size_t pos, size_t n) except -1:
    """Staged frames [0, n) to segment position pos: pwrite (large) or a copy into the mapping."""
    cdef int err
    if n == 0:
        return 0
    if fd >= 0 and n >= <size_t>self._pwrite_min:
        with nogil:
            err = pwrite_all(fd, self._stage, n, pos)
        if err:
            raise_oserror(err, self._active.path)
    else:
        memcpy(self._w + pos, self._stage, n)
    return 0
