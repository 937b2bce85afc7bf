"""Readers over format-v2 logs built from the spec (tests/v2spec.py, no engine code): frames of
many records, groups, headers columns, keys None vs b"", damaged indexes and forged frames.
Every answer is compared with what the spec builder put there."""
import os
import random
import struct
import sys
import time

import numpy as np
import pytest

import tidelog
from tidelog import _core

sys.path.insert(0, os.path.dirname(__file__))
import v2spec as S  # noqa: E402


def recs_for(n, start=0, seed=0, size=None, keys=True, ts="random"):
    rnd = random.Random(seed * 7919 + start)
    out = []
    for i in range(n):
        o = start + i
        v = bytes([o % 251]) * (size if size is not None else rnd.randrange(0, 40))
        k = None
        if keys:
            k = rnd.choice([None, b"", b"k%d" % o])
        t = 1000 + o if ts == "grow" else rnd.randrange(0, 10 ** 6) if ts == "random" else ts
        out.append(S.Rec(v, k, t))
    return out


def frames_of(sizes, start=0, seed=0, **kw):
    """Frames holding `sizes` records each (1: single form, unless the size is negative: a
    multi-form frame of one record)."""
    out, o = [], start
    for n in sizes:
        m = abs(n)
        recs = recs_for(m, o, seed, **kw)
        out.append(S.Frame(recs, "single") if n == 1 else S.Frame(recs))
        o += m
    return out


def same(rec, offset, spec):
    assert rec.offset == offset
    assert rec.timestamp == spec.ts, (offset, rec.timestamp, spec.ts)
    assert rec.key == spec.key, (offset, rec.key, spec.key)
    assert bytes(rec.value) == spec.value, (offset, bytes(rec.value), spec.value)


def idx_path(built, k=0):
    return S.seg_path(built.path, built.segs[k].base, ".idx")


def damage_idx(built, how):
    for s in built.segs:
        p = S.seg_path(built.path, s.base, ".idx")
        if how == "deleted":
            os.unlink(p)
        elif how == "zeroed":
            with open(p, "r+b") as f:
                n = os.path.getsize(p) - 64
                f.seek(64)
                f.write(bytes(n))
        elif how == "wrong":
            # every entry names the frame after the right one (or the first frame): a hint that
            # does not hold the record
            with open(p, "r+b") as f:
                data = bytearray(f.read())
            poss = [fp for fp, _, _ in s.frames]
            for j in range(64, len(data), 4):
                e = struct.unpack_from("<I", data, j)[0]
                nxt = poss[(poss.index(e) + 1) % len(poss)] if e in poss else 64
                struct.pack_into("<I", data, j, nxt)
            with open(p, "wb") as f:
                f.write(data)
        elif how == "garbage":
            with open(p, "r+b") as f:
                data = bytearray(f.read())
            rnd = random.Random(5)
            for j in range(64, len(data), 4):
                struct.pack_into("<I", data, j, rnd.choice([8, 64, 72, 4096, 65528, 0xFFFFFFFF,
                                                            rnd.randrange(0, 1 << 16) & ~7]))
            with open(p, "wb") as f:
                f.write(data)


SIZES = [1, 2, 3, 4, 5, 1000, 1, 1, -1, 3, 4, 2, 5, 1000, 2, 1]


@pytest.mark.parametrize("idx", ["intact", "deleted", "zeroed", "wrong", "garbage"])
def test_read_every_offset_across_frame_sizes(tmp_path, idx):
    built = S.write_log(str(tmp_path / "log"), [frames_of(SIZES[:8]),
                                                 frames_of(SIZES[8:], sum(SIZES[:8]))],
                        segment_bytes=1 << 17)
    damage_idx(built, idx) if idx != "intact" else None
    with tidelog.open(built.path, readonly=True) as log:
        assert (log.start_offset, log.end_offset) == (0, built.end)
        for o in range(built.end):
            same(log.read(o), o, built.records[o])
        for o in random.Random(1).sample(range(built.end), 300):
            same(log.read(o), o, built.records[o])


def test_cursor_across_frames_groups_and_segments(tmp_path):
    segs, o = [], 0
    for k in range(3):
        recs = recs_for(40, o, seed=k)
        fr = [S.Frame(recs[0:1], "single"), S.Frame(recs[1:10], more=True),
              S.Frame(recs[10:11], "single", more=True), S.Frame(recs[11:30]),
              S.Frame(recs[30:31], "single"), S.Frame(recs[31:40])]
        segs.append(fr)
        o += 40
    built = S.write_log(str(tmp_path / "log"), segs)
    with tidelog.open(built.path, readonly=True) as log:
        got = list(log.cursor())
        assert len(got) == built.end
        for o, r in enumerate(got):
            same(r, o, built.records[o])
        for start in range(0, built.end, 7):
            cur = log.cursor(start=start)
            for o, r in zip(range(start, built.end), cur):
                same(r, o, built.records[o])
                if o > start + 12:
                    break
        cur = log.cursor()
        n = 0
        while True:                 # batches and single records interleaved on one cursor
            b = cur.read_batch(max_records=3)
            if not len(b):
                break
            for i, r in enumerate(b):
                same(r, n + i, built.records[n + i])
            n += len(b)
            r = next(cur, None)
            if r is None:
                break
            same(r, n, built.records[n])
            n += 1
        assert n == built.end


@pytest.mark.parametrize("max_records", [1, 2, 3, 7, 64, 65536])
@pytest.mark.parametrize("max_bytes", [None, 1, 17, 300])
def test_read_batch_mid_frame_and_cut(tmp_path, max_records, max_bytes):
    built = S.write_log(str(tmp_path / "log"),
                        [frames_of([5, 1, 1, 30, 2, -1, 1, 40], seed=3),
                         frames_of([10, 1, 20], 80, seed=4)])
    with tidelog.open(built.path, readonly=True) as log:
        for start in [0, 2, 5, 6, 7, 8, 20, 37, 40, 41, 79, 80, 85, 95]:
            cur = log.cursor(start=start)
            o = start
            while True:
                b = cur.read_batch(max_records=max_records, max_bytes=max_bytes)
                if not len(b):
                    break
                assert len(b) <= max_records
                assert max_bytes is None or len(b) == 1 or b.nbytes <= max_bytes
                assert b.nbytes == sum(len(v) for v in b.values)
                assert list(b.offsets) == list(range(o, o + len(b)))
                ts = b.timestamps
                keys = b.keys
                for i, r in enumerate(b):
                    same(r, o + i, built.records[o + i])
                    assert ts[i] == built.records[o + i].ts
                    assert keys[i] == built.records[o + i].key
                    assert bytes(b.values[i]) == built.records[o + i].value
                assert sum(len(f) for f in b.frames()) == len(b)
                o += len(b)
                assert cur.position == o
            assert o == built.end


def mapping_range(log, built, offset):
    """(start, end) addresses of the mapping of the segment holding `offset`."""
    r = log.read(offset)
    addr = np.frombuffer(r.value, np.uint8).ctypes.data if len(r.value) else None
    seg = [s for s in built.segs if s.base <= offset < s.end][0]
    path, fpos = built.where(offset)
    frame = seg.data[fpos:fpos + struct.unpack_from("<I", seg.data, fpos)[0]]
    L = S.layout(frame)
    i = offset - L["base"]
    vstart = fpos + L["c_values"] + (i * (L["length"] - L["c_values"]) // L["n"]
                                     if L["attrs"] & S.ATTR_UNIFORM else
                                     struct.unpack_from("<I", frame, L["c_voff"] + 4 * i)[0])
    return addr - vstart, addr - vstart + len(seg.data)


def test_values_array_zero_copy_in_one_frame_copied_across(tmp_path):
    rows = [S.Rec(struct.pack("<q", 10 * i), None, 5) for i in range(300)]
    built = S.write_log(str(tmp_path / "log"), [[
        S.Frame(rows[0:100]), S.Frame(rows[100:250], ts_shared=False),
        S.Frame(rows[250:251], "single"), S.Frame(rows[251:300])]])
    with tidelog.open(built.path, readonly=True) as log:
        lo, hi = mapping_range(log, built, 0)
        cur = log.cursor(start=10)
        b = cur.read_batch(max_records=50)              # inside the first frame
        a = b.values_array(np.int64)
        assert list(a) == [10 * i for i in range(10, 60)]
        assert lo <= a.ctypes.data < hi and not a.flags.writeable
        assert a.ctypes.data % 8 == 0
        whole = log.cursor(start=0).read_batch()
        assert len(whole) == 300 and len(whole.frames()) == 4
        a = whole.values_array(np.int64)                  # several frames: one gather copy
        assert list(a) == [10 * i for i in range(300)]
        assert not (lo <= a.ctypes.data < hi) and not a.flags.writeable
        start = 0
        for f in whole.frames():                          # each frame part: zero-copy
            v = f.values_array(np.int64)
            assert lo <= v.ctypes.data < hi
            assert list(v) == [10 * i for i in range(start, start + len(f))]
            assert list(f.offsets) == list(range(start, start + len(f)))
            assert list(f.timestamps) == [5] * len(f)
            start += len(f)
        f1 = whole.frames()[1]
        t = f1.timestamps                                 # a timestamps column: a view too
        assert lo <= t.ctypes.data < hi and list(t) == [5] * 150
        # the first frame's values are 64-byte aligned (the writer's vpad)
        v0 = whole.frames()[0].values_array(np.int64)
        assert (v0.ctypes.data - lo) % 64 == 0
        with pytest.raises(ValueError, match="8 bytes"):
            whole.values_array(np.int32)


def test_values_array_of_varying_sizes_refused(tmp_path):
    recs = [S.Rec(b"x" * (i % 3 + 1)) for i in range(20)]
    built = S.write_log(str(tmp_path / "log"), [[S.Frame(recs)]])
    with tidelog.open(built.path, readonly=True) as log:
        b = log.cursor().read_batch()
        with pytest.raises(ValueError, match="sizes range 1..3"):
            b.values_array(np.uint8)
        b2 = log.cursor(start=3).read_batch(max_records=1)
        assert list(b2.values_array(np.uint8)) == [ord("x")]


def test_keys_none_and_empty_stay_distinct(tmp_path):
    recs = [S.Rec(b"v%d" % i, [None, b"", b"key"][i % 3], i) for i in range(30)]
    built = S.write_log(str(tmp_path / "log"), [[S.Frame(recs[:15]), S.Frame(recs[15:16], "single"),
                                                 S.Frame(recs[16:])]])
    with tidelog.open(built.path, readonly=True) as log:
        for o in range(30):
            assert log.read(o).key == recs[o].key
        b = log.cursor().read_batch()
        assert b.keys == [r.key for r in recs]
        assert [r.key for r in log.cursor()] == [r.key for r in recs]


def test_headers_columns_are_skipped(tmp_path):
    recs = [S.Rec(b"value%d" % i, b"k%d" % i if i % 2 else None, 100 - i,
                  tuple((b"h%d" % j, b"x" * j) for j in range(i % 4))) for i in range(25)]
    built = S.write_log(str(tmp_path / "log"), [[
        S.Frame(recs[:10]), S.Frame(recs[10:11], "single"), S.Frame(recs[11:12]),
        S.Frame(recs[12:25], ts_shared=False)]])
    f0 = built.segs[0].data[64:]
    assert S.layout(f0)["attrs"] & S.ATTR_HEADERS
    with tidelog.open(built.path, readonly=True) as log:
        for o in range(25):
            same(log.read(o), o, recs[o])
        for o, r in enumerate(log.cursor()):
            same(r, o, recs[o])
        b = log.cursor().read_batch()
        assert list(b.timestamps) == [r.ts for r in recs]
        assert [bytes(v) for v in b.values] == [r.value for r in recs]
        assert log.offset_for_time(95) == 0
        assert log.offset_for_time(101) == 25


def test_multi_form_count_one_vpad_zero_equal_timestamps(tmp_path):
    recs = recs_for(12, seed=9, ts=77)
    built = S.write_log(str(tmp_path / "log"), [[
        S.Frame(recs[0:1]), S.Frame(recs[1:6], vpad=0), S.Frame(recs[6:12], ts_shared=False)]])
    with tidelog.open(built.path, readonly=True) as log:
        for o in range(12):
            same(log.read(o), o, recs[o])
        assert [r.offset for r in log.cursor()] == list(range(12))


# --- forged frames: each validity rule of §4 broken, with a valid CRC -------------------------

def _forge(frame, fn):
    f = bytearray(frame)
    fn(f, S.layout(frame))
    return S.fix_crc(f)


def _u32(f, at, v):
    struct.pack_into("<I", f, at, v)


def _attrs(f, v):
    struct.pack_into("<H", f, 28, v)


FORGERIES = {
    "reserved_bit": lambda f, L: _attrs(f, L["attrs"] | (1 << 12)),
    "hdr_nulls_bit": lambda f, L: _attrs(f, L["attrs"] | (1 << 10)),
    "codec": lambda f, L: _attrs(f, L["attrs"] | 1),
    "vpad_not_multiple": lambda f, L: struct.pack_into("<H", f, 30, L["vpad"] + 4),
    "vpad_too_large": lambda f, L: struct.pack_into("<H", f, 30, 64),
    "count_zero": lambda f, L: _u32(f, 24, 0),
    "count_huge": lambda f, L: _u32(f, 24, 0xFFFFFFFF),
    "count_bigger": lambda f, L: _u32(f, 24, L["n"] + 1),
    "voff_decreasing": lambda f, L: (_u32(f, L["c_voff"] + 8, 40), _u32(f, L["c_voff"] + 12, 1)),
    "voff_not_zero": lambda f, L: _u32(f, L["c_voff"], 1),
    "voff_end_past_frame": lambda f, L: _u32(f, L["c_voff"] + 4 * L["n"], 1 << 20),
    "koff_decreasing": lambda f, L: _u32(f, L["c_koff"] + 8, 1 << 16),
    "koff_end_past_frame": lambda f, L: _u32(f, L["c_koff"] + 4 * L["n"], 1 << 20),
    "key_bitmap_trailing_bit": lambda f, L: f.__setitem__(L["c_kvalid"] + (L["n"] - 1) // 8,
                                                          f[L["c_kvalid"] + (L["n"] - 1) // 8]
                                                          | 0x80),
    "absent_key_nonempty": None,     # built below
    "ts_max_wrong": lambda f, L: struct.pack_into("<q", f, 16, L["ts"] + 1),
    "ts_max_lower": lambda f, L: struct.pack_into("<q", f, 16, L["ts"] - 1),
    "keys_bit_without_columns": lambda f, L: _attrs(f, L["attrs"] & ~S.ATTR_KEYS),
    "uniform_not_dividing": None,    # built below
    "length_short": lambda f, L: _u32(f, 0, 24),
}


def forged_frame(name, base, at):
    """(frame bytes, records) for forgery `name` of a frame placed at `at` with base `base`."""
    recs = [S.Rec(b"a" * (i + 1), [b"k", None, b""][i % 3], 50 + (i * 7) % 11) for i in range(11)]
    if name == "uniform_not_dividing":
        recs = [S.Rec(b"abcd", None, 5) for _ in range(5)]
        fr = bytearray(S.multi(base, recs, at=at))
        fr += b"z"
        _u32(fr, 0, len(fr))
        return S.fix_crc(fr), recs
    good = S.multi(base, recs, at=at)
    if name == "absent_key_nonempty":
        # keys k, None, b"", k, ...: key offsets 0,1,1,1,2...; C4[1] = 0 gives record 0 the
        # range 0..0 and the absent key of record 1 the range 0..1 (still non-decreasing)
        f = bytearray(good)
        _u32(f, S.layout(good)["c_koff"] + 4, 0)
        return S.fix_crc(f), recs
    return _forge(good, FORGERIES[name]), recs


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_forged_frame_is_corruption_never_a_crash(tmp_path, name):
    # frames: good single (offset 0), good multi (1..5), the forged multi (6..16), good after
    good1 = recs_for(1, 0)
    good2 = recs_for(5, 1)
    seg = S.segment(0, [S.Frame(good1, "single"), S.Frame(good2)], 1 << 16)
    at = seg.frames[-1][0] + S.align8(struct.unpack_from("<I", seg.data, seg.frames[-1][0])[0])
    bad, recs = forged_frame(name, 6, at)
    assert bad != S.multi(6, recs, at=at) or name == "uniform_not_dividing"
    built = S.write_log(str(tmp_path / "log"), [[S.Frame(good1, "single"), S.Frame(good2),
                                                 (bad, len(recs)),
                                                 S.Frame(recs_for(3, 6 + len(recs)))]])
    segpath = S.seg_path(built.path, 0)
    n_bad = len(recs)
    # the control page says where the log ends: after the forged frame's 11 records + 3
    with tidelog.open(built.path, readonly=True) as log:
        for o in range(6):
            same(log.read(o), o, built.records[o])
        for o in (6, 6 + n_bad // 2, 6 + n_bad - 1):
            if o >= log.end_offset:
                continue
            with pytest.raises(tidelog.CorruptLogError) as e:
                log.read(o)
            assert e.value.path == segpath
            # (a frame whose length or count is broken stops the walk at its start)
            assert e.value.offset in (6, o) and e.value.position == at, (e.value, at)
        cur = log.cursor()
        got = []
        with pytest.raises(tidelog.CorruptLogError) as e:
            for r in cur:
                got.append(r.offset)
        assert got == list(range(6)) and e.value.path == segpath and e.value.offset == 6
        cur = log.cursor(start=3)
        b = cur.read_batch()
        assert list(b.offsets) == [3, 4, 5]
        with pytest.raises(tidelog.CorruptLogError):
            cur.read_batch()
        with pytest.raises(tidelog.CorruptLogError):
            log.cursor(start=7).read_batch()
        with pytest.raises(tidelog.CorruptLogError):
            log.offset_for_time(10 ** 9)


R_64K = ((1 << 16) - 64) // 8      # FORMAT.md rule 8: R of a 64 KiB segment


@pytest.mark.parametrize("past", [1, 3 * R_64K])
def test_a_count_past_R_is_damage_to_every_reader(tmp_path, past):
    """Rule 8 for the readers: a forged frame (valid CRC) of empty uniform values costs no byte
    per record, so its count (rules 1-5 hold) may claim any number of records; one taking its
    segment past R is damage at the read, for verify, and lost to salvage. Readers handed
    every claimed record out (with a count of 2**32 - 1: a cursor, `tidelog dump` and salvage
    ran for hours, read_arrow went out of memory) and verify called the log clean."""
    good1 = recs_for(1, 0)
    good2 = recs_for(5, 1)
    seg = S.segment(0, [S.Frame(good1, "single"), S.Frame(good2)], 1 << 16)
    at = seg.frames[-1][0] + S.align8(struct.unpack_from("<I", seg.data, seg.frames[-1][0])[0])
    count = R_64K - 6 + past
    bad = bytearray(S.multi(6, [S.Rec(b"", None, 7)], at=at))
    struct.pack_into("<I", bad, 24, count)       # (a Built would list every claimed record)
    built = S.write_log(str(tmp_path / "log"), [[S.Frame(good1, "single"), S.Frame(good2),
                                                 (S.fix_crc(bad), 1)]])
    with open(os.path.join(built.path, "tidelog.ctl"), "r+b") as f:
        f.seek(24)
        f.write(struct.pack("<qq", 6 + count, 6 + count))      # end and durable offsets
    segpath = S.seg_path(built.path, 0)
    with tidelog.open(built.path, readonly=True) as log:
        assert log.end_offset == 6 + count
        for o in range(6):
            same(log.read(o), o, built.records[o])
        for o in (6, 6 + count - 1):
            with pytest.raises(tidelog.CorruptLogError, match="more records than a segment") as e:
                log.read(o)
            assert e.value.path == segpath and e.value.position == at
        got = []
        with pytest.raises(tidelog.CorruptLogError) as e:
            for r in log.cursor():
                got.append(r.offset)
        assert got == list(range(6)) and e.value.offset == 6 and e.value.position == at
        cur = log.cursor(start=3)
        assert list(cur.read_batch(1 << 40).offsets) == [3, 4, 5]
        with pytest.raises(tidelog.CorruptLogError):
            cur.read_batch(1 << 40)
        with pytest.raises(tidelog.CorruptLogError):
            log.offset_for_time(10 ** 7)      # (above every good record: read on)
    report = tidelog.verify(built.path)
    assert report.damage is not None and report.damage.offset == 6
    assert report.damage.position == at and "more records" in report.damage.reason
    out = str(tmp_path / "salvaged")
    assert tidelog.salvage(built.path, out).records == 6
    with tidelog.open(out, readonly=True) as log:
        assert [bytes(r.value) for r in log.cursor()] == [r.value for r in good1 + good2]


def test_damage_in_a_large_frame_found_at_first_read(tmp_path):
    recs = recs_for(600, 0, size=16, keys=False)
    built = S.write_log(str(tmp_path / "log"), [[S.Frame(recs[:300]), S.Frame(recs[300:])]])
    seg = built.segs[0]
    pos2 = seg.frames[1][0]
    with open(S.seg_path(built.path, 0), "r+b") as f:     # a flipped value byte, frame 2
        f.seek(pos2 + 4000)
        b = f.read(1)
        f.seek(pos2 + 4000)
        f.write(bytes([b[0] ^ 1]))
    with tidelog.open(built.path, readonly=True) as log:
        for o in (0, 299):
            same(log.read(o), o, recs[o])
        for o in (300, 450, 599):
            with pytest.raises(tidelog.CorruptLogError, match="CRC") as e:
                log.read(o)
            assert e.value.position == pos2 and e.value.offset == o
        b = log.cursor().read_batch()
        assert len(b) == 300
        with pytest.raises(tidelog.CorruptLogError):
            log.cursor(start=500).read_batch()


def test_verified_frames_are_remembered_per_mapping(tmp_path):
    recs = recs_for(600, 0, size=16, keys=False)
    built = S.write_log(str(tmp_path / "log"), [[S.Frame(recs[:300]), S.Frame(recs[300:])]])
    pos2 = built.segs[0].frames[1][0]
    with tidelog.open(built.path, readonly=True) as log:
        for o in range(600):
            same(log.read(o), o, recs[o])
        assert _core._memo_sizes(log) == [2]        # two large frames, each verified once
    with open(S.seg_path(built.path, 0), "r+b") as f:
        f.seek(pos2 + 4000)
        f.write(b"\xff")
    with tidelog.open(built.path, readonly=True) as log:   # a fresh mapping verifies again
        same(log.read(10), 10, recs[10])
        with pytest.raises(tidelog.CorruptLogError):
            log.read(310)


# --- time ---------------------------------------------------------------------------------

@pytest.mark.parametrize("tix", ["intact", "deleted", "zeroed"])
def test_time_lookup_over_multi_frames_with_unordered_timestamps(tmp_path, tix):
    rnd = random.Random(11)
    segs, o, allrecs = [], 0, []
    for k in range(3):
        fr = []
        for n in [1, 70, 3, 200, 1, 64, 129]:
            recs = [S.Rec(b"v", None, rnd.randrange(0, 5000) + 3000 * k) for _ in range(n)]
            if n > 1 and rnd.random() < 0.3:
                recs = [S.Rec(b"v", None, recs[0].ts) for _ in range(n)]    # TS_SHARED
            fr.append(S.Frame(recs, "single") if n == 1 else S.Frame(recs))
            allrecs += recs
            o += n
        segs.append(fr)
    built = S.write_log(str(tmp_path / "log"), segs, segment_bytes=1 << 16)
    for s in built.segs:
        p = S.seg_path(built.path, s.base, ".tix")
        if tix == "deleted":
            os.unlink(p)
        elif tix == "zeroed":
            with open(p, "r+b") as f:
                f.seek(64)
                f.write(bytes(os.path.getsize(p) - 64))
    ts = [r.ts for r in allrecs]
    with tidelog.open(built.path, readonly=True) as log:
        for T in sorted(set(rnd.sample(range(-10, 12000), 300)) | {0, ts[0], max(ts), max(ts) + 1}):
            want = next((i for i, t in enumerate(ts) if t >= T), len(ts))
            assert log.offset_for_time(T) == want, T
            cur = log.cursor()
            cur.seek_time(T)
            assert cur.position == want


def test_retention_by_time_reads_the_frame_maximum(tmp_path):
    """A sealed segment whose last frame is old but a record inside an earlier frame is recent
    is kept; segments all older than the cutoff go."""
    now = time.time_ns()
    old = now - 3600 * 10 ** 9
    seg0 = [S.Frame([S.Rec(b"a", None, old + i) for i in range(10)], ts_shared=False)]
    mixed = [S.Rec(b"b", None, old) for _ in range(10)]
    mixed[4] = S.Rec(b"b", None, now)                       # recent, in the middle of a frame
    seg1 = [S.Frame([S.Rec(b"c", None, old)], "single"), S.Frame(mixed, ts_shared=False),
            S.Frame([S.Rec(b"c", None, old)] * 3)]
    seg2 = [S.Frame([S.Rec(b"d", None, old)], "single")]
    built = S.write_log(str(tmp_path / "log"), [seg0, seg1, seg2])
    for s in built.segs:                # the time index must not decide: zero it
        with open(S.seg_path(built.path, s.base, ".tix"), "r+b") as f:
            f.seek(64)
            f.write(bytes(os.path.getsize(S.seg_path(built.path, s.base, ".tix")) - 64))
    with tidelog.open(built.path, retain_seconds=60) as log:    # applied at open
        assert log.start_offset == 10                       # seg0 gone, seg1 kept
        assert log.read(15).timestamp == now


@pytest.mark.parametrize("seed", range(6))
def test_mutated_frames_give_spec_records_or_corruption(tmp_path, seed):
    """Random byte changes anywhere in the frames (headers, columns, values) of a spec-built
    log: every reader either hands out exactly the spec's record or raises CorruptLogError;
    never a crash, a hang, or another record's bytes."""
    rnd = random.Random(seed)
    for it in range(25):
        sizes = [rnd.choice([1, 1, 2, 3, 5, 9, 40]) for _ in range(rnd.randrange(1, 8))]
        built = S.write_log(str(tmp_path / f"l{it}"), [frames_of(sizes, seed=it)])
        segp = S.seg_path(built.path, 0)
        data = bytearray(open(segp, "rb").read())
        last = built.segs[0].frames[-1][0] + 300
        for _ in range(rnd.randrange(1, 4)):
            i = rnd.randrange(64, min(last, len(data)))
            data[i] = rnd.randrange(256)
        with open(segp, "wb") as f:
            f.write(data)

        def ok(r, o):
            same(r, o, built.records[o])
        with tidelog.open(built.path, readonly=True) as log:
            for o in range(built.end):
                try:
                    ok(log.read(o), o)
                except tidelog.CorruptLogError:
                    pass
            try:
                for o, r in enumerate(log.cursor()):
                    ok(r, o)
            except tidelog.CorruptLogError:
                pass
            for start in range(0, built.end, 3):
                try:
                    b = log.cursor(start=start).read_batch(max_records=rnd.randrange(1, 50))
                    for i, r in enumerate(b):
                        ok(r, start + i)
                    list(b.timestamps), b.keys, [bytes(v) for v in b.values]
                    for f in b.frames():
                        len(f.values), f.nbytes
                except tidelog.CorruptLogError:
                    pass
            try:
                log.offset_for_time(rnd.randrange(0, 10 ** 6))
            except tidelog.CorruptLogError:
                pass
