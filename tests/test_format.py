"""Golden bytes: the on-disk format of docs/FORMAT.md, version 2, pinned byte for byte."""
import os
import struct

import numpy as np
import pytest

import crc32c as oracle

import tidelog
import v2spec
from v2spec import Frame, Rec

SEG = "00000000000000000000.seg"


def frame(offset, ts, key, value, more=False):
    """A single-form frame built from the spec with the oracle CRC (independent of the engine's
    code): v1's layout but for bytes 28..31, attributes TS_SHARED|UNIFORM (|KEYS with a key,
    |MORE when a frame of its group follows), vpad 0."""
    ka = 0 if key is None else (len(key) + 7) // 8 * 8
    length = 32 + ka + len(value)
    attrs = 0x30 | (0 if key is None else 0x40) | (0x200 if more else 0)
    body = struct.pack("<qqiHH", offset, ts, -1 if key is None else len(key), attrs, 0)
    body += (key or b"").ljust(ka, b"\0") + value
    crc = oracle.crc32c(body, oracle.crc32c(struct.pack("<I", length)))
    f = struct.pack("<II", length, crc) + body
    return f + b"\0" * (-len(f) % 8)


def test_golden_segment_bytes(log_path):
    with tidelog.open(log_path, segment_bytes=8192, durability="none") as log:
        log.append(b"hello", key=b"k1", timestamp=1_700_000_000_000_000_000)
        log.append(b"", timestamp=42)
        log.append_batch([b"abcdefgh", b"x"], keys=[None, b""], timestamps=[7, 8])
    with open(os.path.join(log_path, SEG), "rb") as f:
        data = f.read()
    assert len(data) == 8192                       # preallocated capacity
    hdr = data[:64]
    assert hdr[:8] == b"TDLGSEG\0"
    assert struct.unpack_from("<IIqqq", hdr, 8)[:2] == (2, 64)
    assert struct.unpack_from("<q", hdr, 16)[0] == 0            # base offset
    assert struct.unpack_from("<q", hdr, 32)[0] == 8192         # capacity
    assert struct.unpack_from("<I", hdr, 60)[0] == oracle.crc32c(hdr[:60])
    golden = bytes.fromhex(
        "2d000000" "4964e2db" "0000000000000000" "00002a36fe9c9717" "02000000" "7000" "0000"
        "6b31000000000000" "68656c6c6f000000"
        "20000000" "242c8a4f" "0100000000000000" "2a00000000000000" "ffffffff" "3000" "0000"
        # the batch: one multi-form frame at 144, attributes MULTI|KEYS|KEY_NULLS, vpad 24
        "79000000" "e2758416" "0200000000000000" "0800000000000000" "02000000" "c800" "1800"
        "0700000000000000" "0800000000000000"                   # C1 timestamps
        "00000000" "08000000" "09000000" "00000000"             # C2 value offsets, pad
        "0200000000000000"                                      # C3: record 1 has a key
        "00000000" "00000000" "00000000" "00000000"             # C4 key offsets (b"": empty)
        + "00" * 24 +                                           # vpad: values 64-aligned
        "6162636465666768" "7800000000000000")                  # C11 values, pad
    expect = (frame(0, 1_700_000_000_000_000_000, b"k1", b"hello") + frame(1, 42, None, b"")
              + v2spec.multi(2, [Rec(b"abcdefgh", None, 7), Rec(b"x", b"", 8)], at=144)
              + b"\0" * 7)
    assert expect == golden, expect.hex()         # the spec as written builds these bytes
    assert data[64:64 + len(golden)] == golden     # and the engine writes exactly them
    assert data[64 + len(golden):] == bytes(8192 - 64 - len(golden))


def test_single_form_is_v1_but_for_bytes_28_to_31(log_path):
    """The design's golden example: offset 1, ts 42, no key, empty value."""
    f = frame(1, 42, None, b"")
    assert f[:4] == b"\x20\0\0\0" and f[8:28] == bytes.fromhex(
        "0100000000000000" "2a00000000000000" "ffffffff")
    assert f[28:32] == bytes.fromhex("30000000")


@pytest.mark.parametrize("where", ["control", "segment"])
def test_a_version_1_log_is_refused_untouched(log_path, where):
    """No release carried format version 1: a log made by a pre-release is refused, naming the
    version and what to do, before anything is changed (readers and writers alike)."""
    with tidelog.open(log_path, segment_bytes=8192) as log:
        log.append(b"a")
    if where == "control":
        p, off = os.path.join(log_path, "tidelog.ctl"), 8
        with open(p, "r+b") as f:
            f.seek(off)
            f.write(struct.pack("<I", 1))
    else:
        p = os.path.join(log_path, SEG)
        with open(p, "r+b") as f:
            h = bytearray(f.read(64))
            struct.pack_into("<I", h, 8, 1)
            struct.pack_into("<I", h, 60, oracle.crc32c(bytes(h[:60])))
            f.seek(0)
            f.write(h)
    before = {n: (open(os.path.join(log_path, n), "rb").read(),
                  os.stat(os.path.join(log_path, n)).st_mtime_ns)
              for n in sorted(os.listdir(log_path))}
    for kw in ({}, {"readonly": True}):
        with pytest.raises(tidelog.FormatVersionError,
                           match="version 1;.*pre-release.*must be re-created"):
            with tidelog.open(log_path, **kw) as log:
                list(log.cursor())
    after = {n: (open(os.path.join(log_path, n), "rb").read(),
                 os.stat(os.path.join(log_path, n)).st_mtime_ns)
             for n in sorted(os.listdir(log_path))}
    assert after == before


def test_control_file_layout(log_path):
    with tidelog.open(log_path, segment_bytes=8192, durability="none") as log:
        log.append_batch([b"a"] * 3)
    with open(os.path.join(log_path, "tidelog.ctl"), "rb") as f:
        ctl = f.read()
    assert len(ctl) == 4096 and ctl[:8] == b"TDLGCTL\0"
    version, flags, start, end, durable, abase, apos, segb = struct.unpack_from("<IIqqqqqq", ctl, 8)
    assert (version, flags & 1, start, end, durable, abase) == (2, 1, 0, 3, 3, 0)
    assert apos == 64 + 72 and segb == 8192     # one multi-form frame: 32 + vpad 32 + 3, padded


def test_index_files(log_path):
    with tidelog.open(log_path, segment_bytes=1 << 16, durability="none") as log:
        for i in range(300):
            log.append(b"v" * 100, timestamp=1000 + (i % 7) * (-1) ** i)   # 136-byte frames
    base = os.path.join(log_path, SEG[:-4])
    with open(base + ".idx", "rb") as f:
        idx = f.read()
    with open(base + ".tix", "rb") as f:
        tix = f.read()
    assert idx[:8] == b"TDLGIDX\0" and tix[:8] == b"TDLGTIX\0"
    assert struct.unpack_from("<IIq", idx, 8) == (2, 4, 0)           # version, stride, base
    assert struct.unpack_from("<IIq", tix, 8) == (2, 64, 0)
    assert struct.unpack_from("<I", idx, 60)[0] == oracle.crc32c(idx[:60])
    max_records = ((1 << 16) - 64) // 8            # R: a record may take 8 bytes (rule 8)
    # allocated in whole pages as the records need them, never past the entries of R records
    assert 64 + 4 * (300 // 4 + 1) <= len(idx) <= 64 + 4 * (max_records // 4 + 1)
    assert 64 + 8 * (300 // 64 + 1) <= len(tix) <= 64 + 8 * (max_records // 64 + 1)
    for j in range((len(idx) - 64) // 4):
        pos = struct.unpack_from("<I", idx, 64 + 4 * j)[0]
        assert pos == (64 + 4 * j * 136 if 4 * j < 300 else 0)
    ts = [1000 + (i % 7) * (-1) ** i for i in range(300)]
    for j in range((len(tix) - 64) // 8):
        got = struct.unpack_from("<q", tix, 64 + 8 * j)[0]
        assert got == (max(ts[:64 * j + 1]) if 64 * j < 300 else 0)


def test_index_files_of_stride_16_still_serve(log_path):
    """Logs written before the .idx stride became 4 have stride-16 index files (the header says
    so): readers and writers use them as they are."""
    with tidelog.open(log_path, segment_bytes=1 << 16, durability="none") as log:
        for i in range(300):
            log.append(b"v" * 100)
    base = os.path.join(log_path, SEG[:-4])
    max_records = ((1 << 16) - 64) // 8
    hdr = bytearray(64)
    hdr[0:8] = b"TDLGIDX\0"
    struct.pack_into("<IIq", hdr, 8, 2, 16, 0)
    struct.pack_into("<I", hdr, 60, oracle.crc32c(bytes(hdr[:60])))
    entries = bytearray(4 * (max_records // 16 + 1))
    for j in range(300 // 16 + 1):
        struct.pack_into("<I", entries, 4 * j, 64 + 16 * j * 136)
    with open(base + ".idx", "wb") as f:
        f.write(bytes(hdr) + bytes(entries))
    with tidelog.open(log_path, readonly=True) as r:
        assert [bytes(r.read(o).value[:1]) for o in (0, 15, 16, 17, 299)] == [b"v"] * 5
        assert r._index_problems() == []                # the old index checks out as valid
    with tidelog.open(log_path, segment_bytes=1 << 16, durability="none") as log:
        for i in range(100):                            # the writer fills it at stride 16
            log.append(b"w" * 100)
    with open(base + ".idx", "rb") as f:
        idx = f.read()
    assert struct.unpack_from("<IIq", idx, 8) == (2, 16, 0)
    assert struct.unpack_from("<I", idx, 64 + 4 * 20)[0] == 64 + 320 * 136
    with tidelog.open(log_path, readonly=True) as r:
        assert r._index_problems() == []
        assert [r.read(o).offset for o in range(0, 400, 7)] == list(range(0, 400, 7))


# --- multi-form frames (FORMAT.md §2): the writer's bytes against tests/v2spec.py -------------



def seg_frames(data):
    """[(pos, base, count, attrs, frame bytes)] of a segment's data, following lengths."""
    out = []
    pos = 64
    while pos + 32 <= len(data):
        length = struct.unpack_from("<I", data, pos)[0]
        if length == 0:
            break
        L = v2spec.layout(data[pos:pos + length])
        out.append((pos, L["base"], L["n"], L["attrs"], data[pos:pos + length]))
        pos += (length + 7) // 8 * 8
    return out


def multi_log(path, **kw):
    log = tidelog.open(path, durability="none", **kw)
    log._multi_form = True
    return log


def test_golden_multi_form_frames(log_path):
    """Per-record timestamps (C1), value offsets (C2), None vs b"" keys (C3, C4), a numpy batch
    (UNIFORM | TS_SHARED, values 64-aligned in the file), and single frames around them."""
    with multi_log(log_path, segment_bytes=8192) as log:
        log.append(b"hello", key=b"k1", timestamp=1_700_000_000_000_000_000)
        log.append_batch([b"abc", b"de", b"f"], keys=[None, b"", b"kk"], timestamps=[7, 9, 8])
        log.append_batch(np.arange(6, dtype=np.int64), timestamps=[5] * 6)
        log.append_batch([b"x"], timestamps=[3])                   # one record: single form
        log.append_batch([b"12", b"34"], keys=[b"a", b"b"], timestamps=[4, 4])
    with open(os.path.join(log_path, SEG), "rb") as f:
        data = f.read()
    spec = v2spec.segment(0, [
        Frame([Rec(b"hello", b"k1", 1_700_000_000_000_000_000)], form="single"),
        Frame([Rec(b"abc", None, 7), Rec(b"de", b"", 9), Rec(b"f", b"kk", 8)]),
        Frame([Rec(np.int64(i).tobytes(), None, 5) for i in range(6)]),
        Frame([Rec(b"x", None, 3)], form="single"),
        Frame([Rec(b"12", b"a", 4), Rec(b"34", b"b", 4)]),
    ], capacity=8192)
    assert data[64:] == spec.data[64:]
    fr = seg_frames(data)
    assert [(b, n, a) for _, b, n, a, _ in fr] == [
        (0, 1, 0x70), (1, 3, 0xC8), (4, 6, 0x38), (10, 1, 0x30), (11, 2, 0x78)]
    for pos, _, n, attrs, f in fr:
        if attrs & v2spec.ATTR_MULTI:
            assert (pos + v2spec.layout(f)["c_values"]) % 64 == 0       # vpad: 64-aligned
    # and the index: every .idx slot names the frame holding its record; .tix running max
    idx, tix = v2spec.index_files(spec)
    with open(os.path.join(log_path, SEG[:-4] + ".idx"), "rb") as f:
        got = f.read()
    assert got[:len(idx)] == idx and not any(got[len(idx):])
    with open(os.path.join(log_path, SEG[:-4] + ".tix"), "rb") as f:
        got = f.read()
    assert got[:len(tix)] == tix and not any(got[len(tix):])


def test_a_batch_of_one_is_a_single_append(tmp_path):
    """append_batch([v]) writes exactly the bytes of append(v) (single form, no MORE)."""
    datas = []
    for how in ("append", "batch"):
        p = str(tmp_path / how)
        with multi_log(p, segment_bytes=8192) as log:
            if how == "append":
                log.append(b"value", key=b"key", timestamp=11)
            else:
                log.append_batch([b"value"], keys=[b"key"], timestamps=[11])
        with open(os.path.join(p, SEG), "rb") as f:
            datas.append(f.read()[64:])
    assert datas[0] == datas[1]


@pytest.mark.parametrize("limit", [200, 1000, 4096])
@pytest.mark.parametrize("source", ["list", "numpy", "keys"])
def test_groups_of_frames_by_frame_limit(log_path, limit, source):
    """A batch above _frame_limit becomes a group: frames of at most that many bytes, every one
    but the last with MORE, each exactly the spec's frame of its records."""
    n = 600
    if source == "numpy":
        vals = np.arange(n * 3, dtype=np.int32).reshape(n, 3)
        recs = [Rec(vals[i].tobytes(), None, 77) for i in range(n)]
        kw = dict(timestamps=[77] * n)
    else:
        vals = [bytes([i % 251]) * (i % 37) for i in range(n)]
        keys = [None if i % 3 == 0 else b"k%d" % i for i in range(n)] if source == "keys" else None
        recs = [Rec(v, None if keys is None else keys[i], 1000 + i % 5) for i, v in enumerate(vals)]
        kw = dict(timestamps=[r.ts for r in recs], keys=keys)
    with multi_log(log_path, segment_bytes=1 << 16) as log:
        log._frame_limit = limit
        assert log.append_batch(vals, **kw) == 0
        log.append(b"after", timestamp=1)
    with open(os.path.join(log_path, SEG), "rb") as f:
        data = f.read()
    fr = seg_frames(data)
    assert len(fr) > 2
    off = 0
    for k, (pos, base, cnt, attrs, f) in enumerate(fr[:-1]):
        assert base == off
        assert bool(attrs & v2spec.ATTR_MORE) == (k < len(fr) - 2)
        assert len(f) <= limit or cnt == 1
        more = k < len(fr) - 2
        if attrs & v2spec.ATTR_MULTI:
            want = v2spec.multi(base, recs[base:base + cnt], at=pos, more=more,
                                uniform=bool(attrs & v2spec.ATTR_UNIFORM),
                                ts_shared=bool(attrs & v2spec.ATTR_TS_SHARED))
        else:
            want = v2spec.single(base, recs[base], more=more)
        assert f == want
        off += cnt
    assert off == n and fr[-1][1:4] == (n, 1, 0x30)


@pytest.mark.parametrize("ts_shared", [True, False])
@pytest.mark.parametrize("row", [0, 1, 8, 24, 100])
@pytest.mark.parametrize("limit", [64, 88, 200, 207, 208, 216, 1000, 4096])
def test_uniform_batch_frames_are_filled_greedily(log_path, ts_shared, row, limit):
    """A batch of values of one size (no keys, no headers) is cut into frames by a closed form
    (appender.pxi plan_uniform): each frame takes as many records as fit the limit counting
    the largest value pad, VPAD_MAX (56), as the record-by-record planning does, and every
    frame is the spec's frame of its records."""
    n = 300
    vals = np.arange(n * row, dtype=np.uint64).view(np.uint8)[:n * row].reshape(n, row) \
        if row else np.zeros((n, 0), np.uint8)
    tss = [5] * n if ts_shared else [5 + i % 3 for i in range(n)]
    recs = [Rec(vals[i].tobytes(), None, tss[i]) for i in range(n)]
    with multi_log(log_path, segment_bytes=1 << 20) as log:
        log._frame_limit = limit
        assert log.append_batch(vals, timestamps=tss) == 0
    with open(os.path.join(log_path, SEG), "rb") as f:
        fr = seg_frames(f.read())
    eff = max(limit, 64) & ~7             # the writer's floor on the limit, and align8 of a frame
    per = row + (0 if ts_shared else 8)
    c = 1 if eff < 32 + 56 + 2 * per else (n if per == 0 else (eff - 88) // per)
    off = 0
    for k, (pos, base, cnt, attrs, f) in enumerate(fr):
        assert base == off
        assert cnt == min(c, n - off), (k, cnt, c)
        more = k < len(fr) - 1
        if attrs & v2spec.ATTR_MULTI:
            want = v2spec.multi(base, recs[base:base + cnt], at=pos, more=more,
                                uniform=bool(attrs & v2spec.ATTR_UNIFORM),
                                ts_shared=bool(attrs & v2spec.ATTR_TS_SHARED))
        else:
            want = v2spec.single(base, recs[base], more=more)
        assert f == want
        off += cnt
    assert off == n
