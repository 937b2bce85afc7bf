"""tidelog format version 2 built from the spec alone (docs/design/v2-format.md §1-6, and
docs/FORMAT.md for the control page and segment header): `struct` and the `crc32c` package, no
engine code. Golden, reader and fuzz tests build frames, segments and whole logs with it and
compare what the engine reads or writes against it.

API (everything little-endian, positions in bytes):

    Rec(value, key=None, ts=0, headers=())   one record; headers: ((name: bytes, value: bytes), ...)
    single(base, rec, more=False) -> bytes   a single-form frame (no trailing padding)
    multi(base, recs, *, at=0, ts_shared=None, uniform=None, more=False, vpad=None,
          count=None) -> bytes               a multi-form frame; None = decided from the records
                                             (TS_SHARED when all timestamps are equal, UNIFORM
                                             when all values have one size); KEYS when a key is
                                             not None, KEY_NULLS when some are None and some not;
                                             HEADERS when a record has headers; vpad (default)
                                             makes the values start 64-aligned for a frame at
                                             file position `at`; count forges the count word
    fix_crc(frame) -> bytes                  the same frame with its CRC recomputed (forgeries)
    layout(frame) -> dict                    where the columns of a frame lie (as the spec reads
                                             them; no checks): keys c_ts, c_voff, c_kvalid,
                                             c_koff, c_hidx, c_hnoff, c_hvoff, c_hname, c_hval,
                                             c_keys, c_values (0 = absent), n, attrs, vpad
    Frame(recs, form="multi", **multi_kwargs)   a frame to be placed by segment()/write_log()
                                             (its base and position are known only then);
                                             form="single" needs one record
    segment(base, frames, capacity) -> Seg   a segment file: header + frames (Frame, raw
                                             bytes, or (raw bytes, record count) for a frame
                                             whose count word is forged; placed 8-aligned); Seg.data (bytes of
                                             `capacity`), Seg.frames [(pos, base, count)],
                                             Seg.records [Rec], Seg.end (next offset)
    index_files(seg) -> (idx bytes, tix bytes)   .idx (stride 4: position of the frame holding
                                             base + 4j) and .tix (stride 64: running max
                                             timestamp up to base + 64j) for the records of seg
    control(start, end, active_base, active_pos, segment_bytes, clean=True) -> bytes
    decode(frame) -> [Rec]                   the records of a frame (CRC checked), by the spec
    frames_of(seg bytes) -> [(pos, frame)]   the frames of a segment file, following lengths
    write_log(path, segments, *, segment_bytes=65536, start=0, index=True, clean=True)
        -> Built                             a log directory: `segments` is a list of lists of
                                             Frame/bytes; Built.records {offset: Rec},
                                             Built.segs [Seg], Built.start, Built.end,
                                             Built.where(offset) -> (seg path, frame pos)

Attribute bits: ATTR_MULTI, ATTR_TS_SHARED, ATTR_UNIFORM, ATTR_KEYS, ATTR_KEY_NULLS,
ATTR_HEADERS, ATTR_MORE (CODEC = bits 0..2). FORMAT_VERSION = 2.
"""
import os
import struct
from typing import NamedTuple

import crc32c as _crc

FORMAT_VERSION = 2
SEGMENT_HEADER_SIZE = 64
FRAME_HEADER_SIZE = 32
IDX_STRIDE = 4
TIX_STRIDE = 64

ATTR_CODEC = 0x7
ATTR_MULTI = 1 << 3
ATTR_TS_SHARED = 1 << 4
ATTR_UNIFORM = 1 << 5
ATTR_KEYS = 1 << 6
ATTR_KEY_NULLS = 1 << 7
ATTR_HEADERS = 1 << 8
ATTR_MORE = 1 << 9


class Rec(NamedTuple):
    value: bytes
    key: object = None          # bytes or None (absent: distinct from b"")
    ts: int = 0
    headers: tuple = ()


def align8(n):
    return (n + 7) // 8 * 8


def _pad8(b):
    return bytes(b) + b"\0" * (-len(b) % 8)


def _u32s(xs):
    return _pad8(struct.pack(f"<{len(xs)}I", *xs))


def _offsets(chunks):
    out = [0]
    for c in chunks:
        out.append(out[-1] + len(c))
    return out


def _finish(body):
    """Frame = length, crc, then body (bytes 8..length-1); CRC over the length word, then body."""
    length = 8 + len(body)
    crc = _crc.crc32c(bytes(body), _crc.crc32c(struct.pack("<I", length)))
    return struct.pack("<II", length, crc) + bytes(body)


def fix_crc(frame):
    """The frame (bytes, bytearray) with its CRC recomputed from its length word and bytes."""
    f = bytearray(frame)
    length = struct.unpack_from("<I", f, 0)[0]
    crc = _crc.crc32c(bytes(f[8:length]), _crc.crc32c(bytes(f[0:4])))
    struct.pack_into("<I", f, 4, crc)
    return bytes(f)


def _header_columns(recs):
    """C5..C9 bytes for records with headers."""
    hidx = [0]
    names, vals = [], []
    for r in recs:
        for name, value in r.headers:
            names.append(bytes(name))
            vals.append(bytes(value))
        hidx.append(len(names))
    return (_u32s(hidx) + _u32s(_offsets(names)) + _u32s(_offsets(vals))
            + _pad8(b"".join(names)) + _pad8(b"".join(vals)))


def single(base, rec, more=False):
    """A single-form frame: v1's layout with bytes 28..31 = attributes | vpad 0 << 16."""
    rec = Rec(*rec) if not isinstance(rec, Rec) else rec
    attrs = ATTR_TS_SHARED | ATTR_UNIFORM
    klen = -1
    if rec.key is not None:
        attrs |= ATTR_KEYS
        klen = len(rec.key)
    if rec.headers:
        attrs |= ATTR_HEADERS
    if more:
        attrs |= ATTR_MORE
    body = struct.pack("<qqiHH", base, rec.ts, klen, attrs, 0)
    if rec.headers:
        body += _header_columns([rec])
    if rec.key is not None:
        body += _pad8(rec.key)
    body += bytes(rec.value)
    return _finish(body)


def multi(base, recs, *, at=0, ts_shared=None, uniform=None, more=False, vpad=None, count=None):
    """A multi-form frame of `recs` (see the module doc)."""
    recs = [r if isinstance(r, Rec) else Rec(*r) for r in recs]
    n = len(recs)
    assert n >= 1 or count is not None
    values = [bytes(r.value) for r in recs]
    if ts_shared is None:
        ts_shared = len({r.ts for r in recs}) <= 1
    if uniform is None:
        uniform = len({len(v) for v in values}) <= 1
    nkeys = sum(r.key is not None for r in recs)
    keys = nkeys > 0
    key_nulls = 0 < nkeys < n
    headers = any(r.headers for r in recs)
    attrs = ATTR_MULTI
    attrs |= ATTR_TS_SHARED if ts_shared else 0
    attrs |= ATTR_UNIFORM if uniform else 0
    attrs |= ATTR_KEYS if keys else 0
    attrs |= ATTR_KEY_NULLS if key_nulls else 0
    attrs |= ATTR_HEADERS if headers else 0
    attrs |= ATTR_MORE if more else 0
    if ts_shared:
        hts = recs[0].ts if recs else 0
        assert all(r.ts == hts for r in recs), "ts_shared with differing timestamps"
    else:
        hts = max(r.ts for r in recs)
    cols = b""
    if not ts_shared:
        cols += struct.pack(f"<{n}q", *[r.ts for r in recs])
    if not uniform:
        cols += _u32s(_offsets(values))
    if key_nulls:
        bm = bytearray((n + 7) // 8)
        for i, r in enumerate(recs):
            if r.key is not None:
                bm[i >> 3] |= 1 << (i & 7)
        cols += _pad8(bm)
    if keys:
        kb = [b"" if r.key is None else bytes(r.key) for r in recs]
        cols += _u32s(_offsets(kb))
    if headers:
        cols += _header_columns(recs)
    if keys:
        cols += _pad8(b"".join(kb))
    if vpad is None:
        vpad = -(at + FRAME_HEADER_SIZE + len(cols)) % 64
    body = struct.pack("<qqIHH", base, hts, n if count is None else count, attrs, vpad)
    body += cols + b"\0" * vpad + b"".join(values)
    return _finish(body)


def layout(frame):
    """Column positions of a frame as the spec lays them out (reads C4[n], C5[n], C6[H], C7[H];
    no checks: for tests that forge a column)."""
    f = bytes(frame)
    length, _, base, ts, word, attrs, vpad = struct.unpack_from("<IIqqiHH", f, 0)
    m = attrs & ATTR_MULTI
    n = struct.unpack_from("<I", f, 24)[0] if m else 1
    L = dict(length=length, base=base, ts=ts, attrs=attrs, vpad=vpad, n=n,
             klen=None if m else word,
             c_ts=0, c_voff=0, c_kvalid=0, c_koff=0, c_hidx=0, c_hnoff=0, c_hvoff=0,
             c_hname=0, c_hval=0, c_keys=0, c_values=0)
    p = FRAME_HEADER_SIZE
    if not attrs & ATTR_TS_SHARED:
        L["c_ts"] = p
        p += 8 * n
    if not attrs & ATTR_UNIFORM:
        L["c_voff"] = p
        p += align8(4 * (n + 1))
    if attrs & ATTR_KEY_NULLS:
        L["c_kvalid"] = p
        p += align8((n + 7) // 8)
    if attrs & ATTR_KEYS and m:
        L["c_koff"] = p
        p += align8(4 * (n + 1))
    if attrs & ATTR_HEADERS:
        L["c_hidx"] = p
        p += align8(4 * (n + 1))
        h = struct.unpack_from("<I", f, L["c_hidx"] + 4 * n)[0]
        L["c_hnoff"] = p
        p += align8(4 * (h + 1))
        L["c_hvoff"] = p
        p += align8(4 * (h + 1))
        L["c_hname"] = p
        p += align8(struct.unpack_from("<I", f, L["c_hnoff"] + 4 * h)[0])
        L["c_hval"] = p
        p += align8(struct.unpack_from("<I", f, L["c_hvoff"] + 4 * h)[0])
    if attrs & ATTR_KEYS:
        L["c_keys"] = p
        p += align8(struct.unpack_from("<I", f, L["c_koff"] + 4 * n)[0] if m else word)
    L["c_values"] = p + vpad
    return L


def decode(frame):
    """The records of a frame (bytes from its start; CODEC 0) as [Rec] with offsets from
    base_offset, decoded by the spec alone (headers as (name bytes, value bytes) tuples). Checks
    the CRC; no other rule (for tests that decode what the engine wrote)."""
    f = bytes(frame)
    length = struct.unpack_from("<I", f, 0)[0]
    f = f[:length]
    assert fix_crc(f) == f, "CRC mismatch"
    L = layout(f)
    n, attrs = L["n"], L["attrs"]
    assert attrs & ATTR_CODEC == 0, "compressed: decompress first"
    u32 = lambda at, i: struct.unpack_from("<I", f, at + 4 * i)[0]    # noqa: E731
    out = []
    vtotal = length - L["c_values"]
    for i in range(n):
        ts = struct.unpack_from("<q", f, L["c_ts"] + 8 * i)[0] if L["c_ts"] else L["ts"]
        if attrs & ATTR_UNIFORM:
            s_ = vtotal // n
            v = f[L["c_values"] + i * s_:L["c_values"] + (i + 1) * s_]
        else:
            v = f[L["c_values"] + u32(L["c_voff"], i):L["c_values"] + u32(L["c_voff"], i + 1)]
        key = None
        if attrs & ATTR_KEYS:
            if not attrs & ATTR_MULTI:
                key = f[L["c_keys"]:L["c_keys"] + L["klen"]]
            elif not (attrs & ATTR_KEY_NULLS) or (f[L["c_kvalid"] + (i >> 3)] >> (i & 7)) & 1:
                key = f[L["c_keys"] + u32(L["c_koff"], i):L["c_keys"] + u32(L["c_koff"], i + 1)]
        hs = []
        if attrs & ATTR_HEADERS:
            for h in range(u32(L["c_hidx"], i), u32(L["c_hidx"], i + 1)):
                hs.append((f[L["c_hname"] + u32(L["c_hnoff"], h):L["c_hname"] + u32(L["c_hnoff"], h + 1)],
                           f[L["c_hval"] + u32(L["c_hvoff"], h):L["c_hval"] + u32(L["c_hvoff"], h + 1)]))
        out.append(Rec(v, key, ts, tuple(hs)))
    return out


def frames_of(seg_bytes):
    """(position, frame bytes) of every frame of a segment file's bytes, in order."""
    out = []
    p = SEGMENT_HEADER_SIZE
    while p + FRAME_HEADER_SIZE <= len(seg_bytes):
        length = struct.unpack_from("<I", seg_bytes, p)[0]
        if length == 0:
            break
        out.append((p, seg_bytes[p:p + length]))
        p += align8(length)
    return out


class Frame:
    """A frame to be placed: built once its base offset and file position are known."""

    def __init__(self, recs, form="multi", **kw):
        self.recs = [r if isinstance(r, Rec) else Rec(*r) for r in recs]
        self.form = form
        self.kw = kw
        assert form == "multi" or (len(self.recs) == 1 and not set(kw) - {"more"})

    def build(self, base, at):
        if self.form == "single":
            return single(base, self.recs[0], more=self.kw.get("more", False))
        return multi(base, self.recs, at=at, **self.kw)


class Seg:
    def __init__(self, base, data, frames, records, path=None):
        self.base = base
        self.data = data
        self.frames = frames        # [(pos, base, count)]
        self.records = records      # [Rec], record base + i
        self.end = base + len(records)
        self.path = path


def segment_header(base, capacity, created_ns=0, version=FORMAT_VERSION):
    h = bytearray(64)
    h[0:8] = b"TDLGSEG\0"
    struct.pack_into("<IIqqq", h, 8, version, 64, base, created_ns, capacity)
    struct.pack_into("<I", h, 60, _crc.crc32c(bytes(h[:60])))
    return bytes(h)


def segment(base, frames, capacity=1 << 16, version=FORMAT_VERSION):
    """A segment file of `capacity` bytes holding `frames` (Frame objects or raw frame bytes,
    whose base offset word is used as written) back to back from byte 64."""
    out = bytearray(segment_header(base, capacity, version=version))
    placed, records = [], []
    off = base
    for fr in frames:
        at = len(out)
        if isinstance(fr, Frame):
            b = fr.build(off, at)
            recs = fr.recs
        elif isinstance(fr, tuple):
            b, count = bytes(fr[0]), fr[1]
            recs = None
        else:
            b = bytes(fr)
            recs = None
        if not isinstance(fr, tuple):
            attrs = struct.unpack_from("<H", b, 28)[0]
            count = struct.unpack_from("<I", b, 24)[0] if attrs & ATTR_MULTI else 1
        placed.append((at, off, count))
        if recs is None:
            recs = [None] * count
        records.extend(recs)
        off += count
        out += _pad8(b)
    assert len(out) <= capacity, f"frames take {len(out)} bytes, capacity {capacity}"
    out += bytes(capacity - len(out))
    return Seg(base, bytes(out), placed, records)


def _index_header(magic, stride, base):
    h = bytearray(64)
    h[0:8] = magic
    struct.pack_into("<IIq", h, 8, FORMAT_VERSION, stride, base)
    struct.pack_into("<I", h, 60, _crc.crc32c(bytes(h[:60])))
    return bytes(h)


def index_files(seg):
    """(.idx, .tix) file bytes for seg's records: entries for every slot its records reach."""
    n = len(seg.records)
    holder = []                 # frame position of each record
    for pos, base, count in seg.frames:
        holder.extend([pos] * count)
    idx = [holder[4 * j] for j in range((n + IDX_STRIDE - 1) // IDX_STRIDE)]
    tix, mx = [], None
    for i, r in enumerate(seg.records):
        t = r.ts if r is not None else 0
        mx = t if mx is None else max(mx, t)
        if i % TIX_STRIDE == 0:
            tix.append(mx)
    return (_index_header(b"TDLGIDX\0", IDX_STRIDE, seg.base) + struct.pack(f"<{len(idx)}I", *idx),
            _index_header(b"TDLGTIX\0", TIX_STRIDE, seg.base) + struct.pack(f"<{len(tix)}q", *tix))


def control(start, end, active_base, active_pos, segment_bytes, clean=True, generation=1,
            version=FORMAT_VERSION):
    c = bytearray(4096)
    c[0:8] = b"TDLGCTL\0"
    struct.pack_into("<IIqqqqqqq", c, 8, version, 1 if clean else 0, start, end, end,
                     active_base, active_pos, segment_bytes, generation)
    return bytes(c)


class Built:
    def __init__(self, path, segs, start):
        self.path = path
        self.segs = segs
        self.start = start
        self.end = segs[-1].end if segs else start
        self.records = {}
        self._where = {}
        for s in segs:
            for pos, base, count in s.frames:
                for i in range(count):
                    self._where[base + i] = (s.path, pos)
            for i, r in enumerate(s.records):
                self.records[s.base + i] = r

    def where(self, offset):
        return self._where[offset]


def seg_path(path, base, ext=".seg"):
    return os.path.join(path, f"{base:020d}{ext}")


def write_log(path, segments, *, segment_bytes=1 << 16, start=0, index=True, clean=True):
    """A log directory at `path` (created) from `segments` (lists of Frame/bytes)."""
    os.makedirs(path, exist_ok=True)
    segs = []
    base = start
    for frames in segments:
        s = segment(base, frames, segment_bytes)
        s.path = seg_path(path, base)
        with open(s.path, "wb") as f:
            f.write(s.data)
        if index:
            idx, tix = index_files(s)
            with open(seg_path(path, base, ".idx"), "wb") as f:
                f.write(idx)
            with open(seg_path(path, base, ".tix"), "wb") as f:
                f.write(tix)
        segs.append(s)
        base = s.end
    last = segs[-1]
    apos = (last.frames[-1][0] + align8(struct.unpack_from("<I", last.data, last.frames[-1][0])[0])
            if last.frames else SEGMENT_HEADER_SIZE)
    with open(os.path.join(path, "tidelog.ctl"), "wb") as f:
        f.write(control(start, base, last.base, apos, segment_bytes, clean=clean))
    return Built(path, segs, start)
