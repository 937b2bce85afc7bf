"""Reopen paths: a clean close is trusted without a scan (and damage is still caught by the read
that reaches it); an unclean stop is scanned, a torn tail cut, damage before the durable point
reported with file, position and offset."""
import os
import shutil
import struct
import subprocess
import sys

import pytest

import tidelog

SEG0 = "%020d.seg" % 0


def frame_pos(path, offset, base=0):
    """Byte position of a record's frame, by walking the segment file (independent of the engine)."""
    with open(os.path.join(path, "%020d.seg" % base), "rb") as f:
        data = f.read()
    pos, off = 64, base
    while off < offset:
        (length,) = struct.unpack_from("<I", data, pos)
        pos += (length + 7) // 8 * 8
        off += 1
    return pos


def flip(path, name, pos):
    with open(os.path.join(path, name), "r+b") as f:
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0x40]))


def mark_unclean(path):
    with open(os.path.join(path, "tidelog.ctl"), "r+b") as f:
        f.seek(12)
        flags = struct.unpack("<I", f.read(4))[0]
        f.seek(12)
        f.write(struct.pack("<I", flags & ~1))


def make(path, n=1000):
    # one single-form frame per record (a group chained by MORE), so that damage hits exactly
    # one record; multi-form frames: the tests at the end of this file
    with tidelog.open(path, segment_bytes=1 << 20, durability="none") as log:
        log._multi_form = False
        log.append_batch([b"value-%06d" % i for i in range(n)])


def test_clean_reopen_does_not_scan_but_reads_check_crc(log_path):
    make(log_path)
    pos = frame_pos(log_path, 500)
    flip(log_path, SEG0, pos + 40)                   # a byte of record 500's value
    with tidelog.open(log_path) as log:              # trusted: no scan, opens fine
        assert log.end_offset == 1000
        assert bytes(log.read(499).value) == b"value-000499"
        with pytest.raises(tidelog.CorruptLogError) as ei:
            log.read(500)
        e = ei.value
        assert (e.path, e.position, e.offset) == (os.path.join(log_path, SEG0), pos, 500)
        assert "CRC" in str(e) and "tidelog verify" in str(e)
        cur = log.cursor(490)
        with pytest.raises(tidelog.CorruptLogError):
            list(cur)
        assert cur.position == 500                   # everything before it was handed out
        b = log.cursor(495).read_batch()
        assert len(b) == 5                           # a batch stops before the damage
        with pytest.raises(tidelog.CorruptLogError):
            log.cursor(500).read_batch()


def test_unclean_reopen_reports_damage_before_durable_point(log_path):
    make(log_path)
    pos = frame_pos(log_path, 700)
    flip(log_path, SEG0, pos + 36)
    mark_unclean(log_path)
    # recovery scans the segment holding the durable checkpoint (offset 1000) from its start:
    # the damage below the checkpoint is reported with file, position and offset
    with pytest.raises(tidelog.CorruptLogError) as ei:
        tidelog.open(log_path)
    assert (ei.value.offset, ei.value.position) == (700, pos)
    assert ei.value.path == os.path.join(log_path, SEG0)


def set_ctl(path, end=None, durable=None):
    with open(os.path.join(path, "tidelog.ctl"), "r+b") as f:
        if end is not None:
            f.seek(24)
            f.write(struct.pack("<q", end))
        if durable is not None:
            f.seek(32)
            f.write(struct.pack("<q", durable))


def test_unclean_reopen_cuts_at_damage_above_durable_offset(log_path):
    with tidelog.open(log_path, segment_bytes=1 << 20, durability="none") as log:
        for i in range(1000):
            log.append(b"value-%06d" % i)
    flip(log_path, SEG0, frame_pos(log_path, 700) + 36)
    mark_unclean(log_path)
    set_ctl(log_path, durable=500)       # 500.. were never acknowledged: a torn tail
    with tidelog.open(log_path) as log:
        assert log.end_offset == 700
        assert bytes(log.read(699).value) == b"value-000699"


def test_unclean_reopen_cuts_torn_tail(log_path):
    with tidelog.open(log_path, segment_bytes=1 << 20, durability="none") as log:
        log.append_batch([b"a" * 50] * 100)
        log.sync()
    # an unsynced append that was torn: a frame whose length is set but whose bytes are not
    end = frame_pos(log_path, 100)
    with open(os.path.join(log_path, SEG0), "r+b") as f:
        f.seek(end)
        f.write(struct.pack("<II", 200, 12345) + b"\xee" * 40)
    mark_unclean(log_path)
    # the control page's durable offset is 100: everything durable is intact, the tail goes
    with tidelog.open(log_path, durability="none") as log:
        assert log.end_offset == 100 and log.durable_offset == 100
        assert log.append(b"next") == 100
    with open(os.path.join(log_path, SEG0), "rb") as f:
        f.seek(end)
        data = f.read(200)
    assert data[:8] != struct.pack("<II", 200, 12345)       # the garbage is gone
    with tidelog.open(log_path, readonly=True) as log:
        assert [bytes(r.value) for r in log.cursor(99)] == [b"a" * 50, b"next"]


def test_unclean_reopen_drops_incomplete_batch(log_path):
    with tidelog.open(log_path, segment_bytes=1 << 20, durability="none") as log:
        log._multi_form = False                         # a group of 10 single-form frames
        log.append(b"single")
        log.append_batch([b"b%d" % i for i in range(10)])
    pos = frame_pos(log_path, 6)
    flip(log_path, SEG0, pos + 33)                    # damage the 6th record of the batch
    with open(os.path.join(log_path, "tidelog.ctl"), "r+b") as f:
        f.seek(32)
        f.write(struct.pack("<q", 1))                 # durable point: only the single record
    mark_unclean(log_path)
    with tidelog.open(log_path) as log:
        assert log.end_offset == 1                    # the batch is dropped whole, not cut
        assert bytes(log.read(0).value) == b"single"


def test_control_file_behind_is_corrected_by_scan(log_path):
    make(log_path, 300)
    with open(os.path.join(log_path, "tidelog.ctl"), "r+b") as f:
        f.seek(24)
        f.write(struct.pack("<q", 5))                 # end offset says 5, clean flag still set
    with tidelog.open(log_path) as log:               # the O(1) check fails: it scans instead
        assert log.end_offset == 300


def make_segments(path):
    with tidelog.open(path, segment_bytes=4096, durability="none") as log:
        log._multi_form = False                         # single-form frames (see make())
        log.append_batch([b"r%04d" % i + b"." * 90 for i in range(300)], atomic=False)
        return [b for b, _ in log.segments()]


def test_missing_middle_segment_is_corruption(log_path):
    bases = make_segments(log_path)
    victim = bases[3]
    os.unlink(os.path.join(log_path, "%020d.seg" % victim))
    with tidelog.open(log_path, readonly=True) as log:       # readers: the read that reaches it
        assert bytes(log.read(bases[3] - 1).value).startswith(b"r")
        with pytest.raises(tidelog.CorruptLogError):
            log.read(victim)
        with pytest.raises(tidelog.CorruptLogError):
            list(log.cursor())
    with pytest.raises(tidelog.CorruptLogError) as ei:       # the writer: at open
        tidelog.open(log_path)
    assert ei.value.path.endswith("%020d.seg" % bases[2])


def test_missing_first_segment_is_corruption(log_path):
    bases = make_segments(log_path)
    os.unlink(os.path.join(log_path, "%020d.seg" % bases[0]))
    with pytest.raises(tidelog.CorruptLogError, match="missing"):
        tidelog.open(log_path)


def test_sealed_segment_with_damaged_last_record(log_path):
    bases = make_segments(log_path)
    last = bases[2] - 1
    pos = frame_pos(log_path, last, base=bases[1])
    flip(log_path, "%020d.seg" % bases[1], pos + 40)
    with pytest.raises(tidelog.CorruptLogError) as ei:
        tidelog.open(log_path)
    assert (ei.value.offset, ei.value.position) == (last, pos)


def test_segment_filled_to_less_than_a_header_from_its_end(log_path):
    # 64-byte header + a 4008-byte frame leaves 24 bytes: no frame fits there, the writer rolls
    with tidelog.open(log_path, segment_bytes=4096, durability="none") as log:
        log.append(b"x" * 3976)
        log.append(b"y" * 100)
        assert [b for b, _ in log.segments()] == [0, 1]
    with tidelog.open(log_path) as log:
        assert [len(r.value) for r in log.cursor()] == [3976, 100]


def test_power_loss_tear_in_sealed_segment_drops_later_segments(log_path):
    """A sealed segment lost its tail while the next segments reached the disk (writeback
    order): nothing after the durable offset was acknowledged, so the log is cut at the tear."""
    with tidelog.open(log_path, segment_bytes=4096, durability="none") as log:
        for i in range(300):
            log.append(b"r%04d" % i + b"." * 90)          # single records, not batches
        bases = [b for b, _ in log.segments()]
    mark_unclean(log_path)
    set_ctl(log_path, durable=bases[2])
    last_of_2 = bases[3] - 1
    pos = frame_pos(log_path, last_of_2, base=bases[2])
    with open(os.path.join(log_path, "%020d.seg" % bases[2]), "r+b") as f:
        f.seek(pos)
        f.write(bytes(4096 - pos))            # its last record never reached the disk
    with tidelog.open(log_path, durability="none") as log:
        assert log.end_offset == last_of_2
        assert [b for b, _ in log.segments()] == bases[:3]
        assert log.append(b"new") == last_of_2
    assert not os.path.exists(os.path.join(log_path, "%020d.seg" % bases[3]))
    with tidelog.open(log_path, readonly=True) as log:
        vals = [bytes(r.value) for r in log.cursor()]
    assert vals[:last_of_2] == [b"r%04d" % i + b"." * 90 for i in range(last_of_2)]
    assert vals[last_of_2:] == [b"new"]


def test_power_loss_torn_segment_header_is_dropped(log_path):
    bases = make_segments(log_path)
    mark_unclean(log_path)
    set_ctl(log_path, durable=bases[-2])
    with open(os.path.join(log_path, "%020d.seg" % bases[-1]), "r+b") as f:
        f.write(bytes(64))                    # the last segment's header never reached the disk
    with tidelog.open(log_path, durability="none") as log:
        assert log.end_offset == bases[-1]
        assert [b for b, _ in log.segments()] == bases[:-1]


def test_torn_segment_header_below_durable_offset_is_corruption(log_path):
    bases = make_segments(log_path)
    mark_unclean(log_path)
    with open(os.path.join(log_path, "%020d.seg" % bases[-1]), "r+b") as f:
        f.write(bytes(64))
    with pytest.raises(tidelog.CorruptLogError):
        tidelog.open(log_path)                 # durable offset 300 lies beyond that segment


def test_repair_truncate_cuts_at_the_first_damage(log_path):
    with tidelog.open(log_path, segment_bytes=4096, durability="none") as log:
        for i in range(300):
            log.append(b"r%04d" % i + b"." * 90)
        bases = [b for b, _ in log.segments()]
    victim = bases[2] + 3
    pos = frame_pos(log_path, victim, base=bases[2])
    flip(log_path, "%020d.seg" % bases[2], pos + 40)
    with pytest.raises(tidelog.CorruptLogError):       # the default: reported, nothing changed
        with tidelog.open(log_path) as log:
            list(log.cursor())
    with tidelog.open(log_path, repair="truncate") as log:
        assert log.end_offset == victim
        assert log.repaired[1:3] == (pos, victim) and "CRC" in log.repaired[3]
        assert [b for b, _ in log.segments()] == bases[:3]
    with tidelog.open(log_path) as log:                # a clean, shorter log
        assert log.repaired is None
        assert [bytes(r.value)[:5] for r in log.cursor()] == [b"r%04d" % i for i in range(victim)]
    with pytest.raises(ValueError, match="repair"):
        tidelog.open(log_path, repair="salvage-everything")


# --- format v2: multi-form frames and groups (FORMAT.md §2 rules 1-7), checked by recovery ----

import v2spec                                               # noqa: E402
from v2spec import Frame, Rec                               # noqa: E402


def set_durable(path, off):
    with open(os.path.join(path, "tidelog.ctl"), "r+b") as f:
        f.seek(32)
        f.write(struct.pack("<q", off))


def seg_bytes(path, base=0):
    with open(os.path.join(path, "%020d.seg" % base), "rb") as f:
        return f.read()


def index_bytes(path, base=0):
    out = []
    for ext in (".idx", ".tix"):
        with open(os.path.join(path, "%020d%s" % (base, ext)), "rb") as f:
            out.append(f.read())
    return out


def spec_frames(data):
    out, pos = [], 64
    while pos + 32 <= len(data):
        length = struct.unpack_from("<I", data, pos)[0]
        if length == 0:
            break
        out.append((pos, v2spec.layout(data[pos:pos + length])))
        pos += (length + 7) // 8 * 8
    return out


def write_multi(path, batches, limit=1 << 20, **kw):
    with tidelog.open(path, segment_bytes=1 << 16, durability="none", **kw) as log:
        log._multi_form = True
        log._frame_limit = limit
        for b in batches:
            log.append_batch(b, timestamps=[1000 + len(x) for x in b])
        return log.end_offset


MULTI_BATCHES = [[b"a" * (i % 9) for i in range(300)], [b"bb"] * 50, [b"c"], [b"dd" * i for i in range(70)]]


def expected_index(path):
    """.idx/.tix as the spec makes them for the records the segment holds."""
    data = seg_bytes(path)
    recs = []
    frames = []
    for pos, L in spec_frames(data):
        f = data[pos:pos + L["length"]]
        for i in range(L["n"]):
            ts = L["ts"] if not L["c_ts"] else struct.unpack_from("<q", f, L["c_ts"] + 8 * i)[0]
            recs.append(Rec(b"", None, ts))
        frames.append((pos, L["base"], L["n"]))
    return v2spec.index_files(v2spec.Seg(0, data, frames, recs))


def assert_index_is_spec(path):
    idx, tix = expected_index(path)
    got_idx, got_tix = index_bytes(path)
    assert got_idx[:len(idx)] == idx and not any(got_idx[len(idx):])
    assert got_tix[:len(tix)] == tix and not any(got_tix[len(tix):])


@pytest.mark.parametrize("clean", [True, False])
@pytest.mark.parametrize("limit", [1 << 20, 300])
def test_reopen_after_multi_frames_continues_at_the_end(log_path, clean, limit):
    """Clean reopen (O(1) tail check through the index) and recovery scan both follow
    multi-form frames and groups: the next offset is right, the index is the spec's."""
    end = write_multi(log_path, MULTI_BATCHES, limit)
    assert end == 421
    before = seg_bytes(log_path)
    if not clean:
        mark_unclean(log_path)
        set_durable(log_path, 0)
    with tidelog.open(log_path, segment_bytes=1 << 16, durability="none") as log:
        assert log.end_offset == 421
        log.append(b"next", timestamp=5)
        assert log.end_offset == 422
    after = seg_bytes(log_path)
    n = len(spec_frames(before))
    assert spec_frames(after)[:n] == spec_frames(before) and len(spec_frames(after)) == n + 1
    assert_index_is_spec(log_path)


@pytest.mark.parametrize("how", ["idx", "tix", "both"])
def test_damaged_index_of_multi_frames_is_rebuilt(log_path, how):
    """Index entries of multi frames (every slot of a frame names it; .tix running max of
    per-record timestamps) are checked and rebuilt per frame."""
    write_multi(log_path, MULTI_BATCHES, 300)
    for ext in {"idx": [".idx"], "tix": [".tix"], "both": [".idx", ".tix"]}[how]:
        p = os.path.join(log_path, "%020d%s" % (0, ext))
        with open(p, "r+b") as f:
            f.seek(64 + 8)
            f.write(b"\xff" * 8)
    with tidelog.open(log_path, readonly=True) as r:       # verify's index check, per frame
        assert [os.path.basename(p) for p, _ in r._index_problems()] == ["%020d.idx" % 0]
    mark_unclean(log_path)                                 # after a crash: always rebuilt
    with tidelog.open(log_path, segment_bytes=1 << 16, durability="none") as log:
        assert log.end_offset == 421
        assert log._index_problems() == []
    assert_index_is_spec(log_path)


@pytest.mark.parametrize("which", ["first", "middle", "last"])
def test_a_torn_group_is_cut_whole(log_path, which):
    """A group (frames chained by MORE) damaged in any frame above the durable point is cut
    whole: the log ends where the group began, every frame of it zeroed."""
    write_multi(log_path, [[b"x" * 10] * 20], 1 << 20)            # offsets 0..19, one frame
    with tidelog.open(log_path, segment_bytes=1 << 16, durability="none") as log:
        log._multi_form = True
        log._frame_limit = 256
        log.append_batch([b"y" * 30] * 40)                           # a group of several frames
    data = seg_bytes(log_path)
    frames = spec_frames(data)
    group = frames[1:]
    assert len(group) >= 3 and all(L["attrs"] & v2spec.ATTR_MORE for _, L in group[:-1])
    assert not group[-1][1]["attrs"] & v2spec.ATTR_MORE
    pos = {"first": group[0][0], "middle": group[len(group) // 2][0], "last": group[-1][0]}[which]
    flip(log_path, SEG0, pos + 40)
    mark_unclean(log_path)
    set_durable(log_path, 20)
    with tidelog.open(log_path, segment_bytes=1 << 16, durability="none") as log:
        assert log.end_offset == 20
    data = seg_bytes(log_path)
    assert not any(data[group[0][0]:])
    assert_index_is_spec(log_path)


def test_a_group_without_its_last_frame_is_cut(log_path):
    """MORE on the last frame of a segment's data (its follower never written) is a torn group."""
    b = v2spec.write_log(log_path, [[Frame([Rec(b"a", None, 1)] * 3),
                                     Frame([Rec(b"b", None, 1)] * 2, more=True)]], clean=False)
    set_durable(log_path, 0)
    with tidelog.open(log_path, segment_bytes=1 << 16, durability="none") as log:
        assert log.end_offset == 3
    assert b.end == 5


def forged(kind):
    """A frame (placed at 64 + the first frame's 136 bytes) breaking one validity rule, with a
    valid CRC where the rule is not the CRC."""
    recs = [Rec(b"v%d" % (7 * i), None if i % 2 else b"k", 10 + i) for i in range(5)]
    at = 64 + 72
    f = bytearray(v2spec.multi(3, recs, at=at))
    L = v2spec.layout(bytes(f))
    n = L["n"]
    if kind == "reserved-bit":
        struct.pack_into("<H", f, 28, L["attrs"] | 1 << 12)
    elif kind == "codec":
        struct.pack_into("<H", f, 28, L["attrs"] | 1)
    elif kind == "vpad-60":
        struct.pack_into("<H", f, 30, 60)
    elif kind == "count-0":
        struct.pack_into("<I", f, 24, 0)
    elif kind == "count-huge":
        struct.pack_into("<I", f, 24, 1 << 20)          # columns past the frame
    elif kind == "voff-past-frame":
        struct.pack_into("<I", f, L["c_voff"] + 4 * n, 1 << 20)
    elif kind == "voff-decreasing":
        a, b = struct.unpack_from("<II", f, L["c_voff"] + 4)
        struct.pack_into("<II", f, L["c_voff"] + 4, b, a)
    elif kind == "koff-decreasing":
        a, b = struct.unpack_from("<II", f, L["c_koff"] + 4)
        struct.pack_into("<II", f, L["c_koff"] + 4, b + 1, a)
    elif kind == "bitmap-trailing":
        f[L["c_kvalid"]] |= 0x80
    elif kind == "absent-key-nonempty":
        # record 1 has no key (bit clear): give it a one-byte range, keeping C4 monotonic
        for i, v in enumerate((0, 0, 1, 1, 1)):
            struct.pack_into("<I", f, L["c_koff"] + 4 * i, v)
    elif kind == "max-ts":
        struct.pack_into("<q", f, 16, 99)
    elif kind == "uniform-not-dividing":
        u = v2spec.multi(3, [Rec(b"ab", None, 1), Rec(b"cd", None, 1), Rec(b"ef", None, 1)], at=at)
        f = bytearray(u[:-1])                   # 5 value bytes for 3 records
        struct.pack_into("<I", f, 0, len(f))
    elif kind == "key-nulls-without-keys":
        u = v2spec.multi(3, [Rec(b"ab", None, 1)] * 2, at=at)
        f = bytearray(u)
        struct.pack_into("<H", f, 28, struct.unpack_from("<H", f, 28)[0] | v2spec.ATTR_KEY_NULLS)
    elif kind == "single-without-uniform":
        f = bytearray(v2spec.single(3, Rec(b"abc", None, 1)))
        struct.pack_into("<H", f, 28, 0x10)
    elif kind == "count-past-R":
        # empty uniform values and one timestamp: a record costs no byte, so a count of any
        # size fits the frame (rules 1-5 hold); rule 8 allows a 64 KiB segment R = 8184
        # records, and this frame takes it to R + 1 (a count past R once reached the
        # writer's index unchecked at open: a write past its mapping, the interpreter died)
        f = bytearray(v2spec.multi(3, [Rec(b"", None, 1)], at=at, count=R_64K - 3 + 1))
    elif kind == "crc":
        f[-1] ^= 1
        return bytes(f)
    return v2spec.fix_crc(f)


R_64K = ((1 << 16) - 64) // 8      # FORMAT.md rule 8: R of a 64 KiB segment


FORGERIES = ["reserved-bit", "codec", "vpad-60", "count-0", "count-huge", "voff-past-frame",
             "voff-decreasing", "koff-decreasing", "bitmap-trailing", "absent-key-nonempty",
             "max-ts", "uniform-not-dividing", "key-nulls-without-keys", "single-without-uniform",
             "count-past-R", "crc"]


@pytest.mark.parametrize("kind", FORGERIES)
def test_recovery_cuts_a_frame_breaking_a_rule(log_path, kind):
    """Each validity rule, broken by a frame with a valid CRC (a forgery): recovery above the
    durable point cuts the log before it; below it, CorruptLogError naming file, position and
    offset - never a crash."""
    good = Frame([Rec(b"g%d" % i, None, 1) for i in range(3)])
    v2spec.write_log(log_path, [[good, forged(kind)]], clean=False)
    set_durable(log_path, 3)
    with tidelog.open(log_path, segment_bytes=1 << 16, durability="none") as log:
        assert log.end_offset == 3
    v2spec.write_log(log_path, [[good, forged(kind)]], clean=False)
    set_durable(log_path, 4)
    with pytest.raises(tidelog.CorruptLogError) as e:
        tidelog.open(log_path, segment_bytes=1 << 16, durability="none")
    assert e.value.offset == 3 and e.value.position == 136 and e.value.path.endswith(SEG0)


def test_the_unforged_frame_is_kept(log_path):
    """(The negative control of the forgeries: the same frame untouched is kept.)"""
    good = Frame([Rec(b"g%d" % i, None, 1) for i in range(3)])
    recs = [Rec(b"v%d" % (7 * i), None if i % 2 else b"k", 10 + i) for i in range(5)]
    v2spec.write_log(log_path, [[good, v2spec.multi(3, recs, at=136)]], clean=False)
    set_durable(log_path, 3)
    with tidelog.open(log_path, segment_bytes=1 << 16, durability="none") as log:
        assert log.end_offset == 8


def test_a_segment_of_exactly_R_records_is_kept_and_one_more_is_damage(log_path):
    """Rule 8 at its edge, on every open path: frames of empty values (no byte per record)
    holding exactly R records are a whole segment, and the writer rolls after them; one
    record more is damage - cut above the durable point, CorruptLogError below it and after
    a clean close (whose O(1) check trusted the control page and went on to rebuild the index
    for it), and `repair --truncate` cuts it."""
    good = Frame([Rec(b"g%d" % i, None, 1) for i in range(3)])
    edge = v2spec.fix_crc(v2spec.multi(3, [Rec(b"", None, 1)], at=136, count=R_64K - 3))
    v2spec.write_log(log_path, [[good, edge]], clean=False)
    with tidelog.open(log_path, segment_bytes=1 << 16, durability="none") as log:
        assert log.end_offset == R_64K
        assert bytes(log.read(R_64K - 1).value) == b""
        log.append(b"after")                     # a full segment: this one starts the next
        assert log.segments()[-1][0] == R_64K
    with tidelog.open(log_path, readonly=True) as log:
        assert bytes(log.read(R_64K).value) == b"after"

    shutil.rmtree(log_path)
    v2spec.write_log(log_path, [[good, forged("count-past-R")]], clean=True)
    with pytest.raises(tidelog.CorruptLogError, match="more records than a segment may hold") as e:
        tidelog.open(log_path, segment_bytes=1 << 16, durability="none")
    assert e.value.offset == 3 and e.value.position == 136
    report = tidelog.repair(log_path, truncate=True)
    assert report.truncated[1:3] == (136, 3)
    with tidelog.open(log_path, durability="none") as log:
        assert log.end_offset == 3
        assert [bytes(r.value) for r in log.cursor()] == [b"g0", b"g1", b"g2"]


def test_a_clean_reopen_holds_a_last_frame_based_below_its_segment_to_R(log_path):
    """Rule 8 after a clean close, for a last frame whose base lies below its segment's (a
    forgery, valid CRC): its records end at the control page's end, within R of the segment's
    base, but its count is past R. The O(1) check compared only the end with R and kept the
    log (every read of the segment was then damage); it holds the frame to R as every other
    rule-8 check does now, so the reopen scans and finds the damage: CorruptLogError below
    the durable point."""
    good = Frame([Rec(b"g%d" % i, None, 1) for i in range(10)])
    count = R_64K + 6
    low = v2spec.fix_crc(v2spec.multi(0, [Rec(b"", None, 1)], at=64, count=count))
    b = v2spec.write_log(log_path, [[good], [(low, count)]], clean=True)
    seg1 = b.segs[1].path
    with open(os.path.join(log_path, "tidelog.ctl"), "r+b") as f:
        f.seek(24)
        f.write(struct.pack("<qq", count, count))  # end = its last record + 1 = 10 + R - 4
    with pytest.raises(tidelog.CorruptLogError) as e:
        tidelog.open(log_path, segment_bytes=1 << 16, durability="none")
    assert e.value.path == seg1 and e.value.offset == 10 and e.value.position == 64


def run_child(code, timeout=120):
    """Run `code` in a child Python (a crash or hang there fails the test, not the run); its
    output's words."""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.split()


@pytest.mark.parametrize("clean", [False, True])
def test_a_forged_count_far_past_R_never_reaches_the_index(log_path, clean):
    """A forged frame (valid CRC) claiming 2**28 records of empty values, after a clean close or
    an unclean stop, in a child process (the crash this guards against killed the interpreter:
    the writer's index rebuild at open wrote entries for every claimed record past the end of
    its mapping - SIGSEGV, found by test_fuzz). Unclean: cut, 3 records kept; clean:
    CorruptLogError naming rule 8."""
    good = Frame([Rec(b"g%d" % i, None, 1) for i in range(3)])
    v2spec.write_log(log_path, [[good, forged("count-past-R")]], clean=clean)
    seg = os.path.join(log_path, SEG0)
    with open(seg, "r+b") as f:                 # (v2spec.Built would list 2**28 records)
        f.seek(136)
        frame = bytearray(f.read(struct.unpack("<I", f.read(4))[0]))
        f.seek(136)
        frame = bytearray(f.read(len(frame)))
        struct.pack_into("<I", frame, 24, 1 << 28)
        f.seek(136)
        f.write(v2spec.fix_crc(bytes(frame)))
    with open(os.path.join(log_path, "tidelog.ctl"), "r+b") as f:
        f.seek(24)
        f.write(struct.pack("<qq", 3 + (1 << 28), 3 + (1 << 28) if clean else 0))
    code = (f"import tidelog\n"
            f"try:\n"
            f"    with tidelog.open({log_path!r}, durability='none') as log:\n"
            f"        print('end', log.end_offset)\n"
            f"except tidelog.CorruptLogError as e:\n"
            f"    print('corrupt', e.offset, e.position)\n")
    assert run_child(code) == (["corrupt", "3", "136"] if clean else ["end", "3"])


def test_forged_counts_before_the_last_frame_cost_no_walk_at_a_clean_reopen(log_path):
    """After a clean close only the last frame is checked; the writer then takes the running
    maximum timestamp from the last .tix entry's record on, and walked every record each frame
    claimed (2**32 - 1 for a forged frame of empty values: ~20 s per frame here, so a segment of
    such frames held the open for hours). The walk now follows the offsets up to the end only;
    the forged frames are damage at the read that reaches them. In a child process (the hang
    was the symptom): 40 forged frames, each 2**32 - 1 records."""
    good = Frame([Rec(b"g%d" % i, None, 1) for i in range(3)])
    anchor = Frame([Rec(b"", None, 2)] * 100)                  # holds the .tix entry's record
    tail = [Frame([Rec(b"", None, 3)] * 2) for _ in range(40)]
    last = Frame([Rec(b"end", None, 4)] * 2)
    b = v2spec.write_log(log_path, [[good, anchor] + tail + [last]], clean=True)
    end = b.end
    seg = os.path.join(log_path, SEG0)
    with open(seg, "r+b") as f:
        data = bytearray(f.read())
        for pos, base, count in b.segs[0].frames[1:-1]:        # every frame but the first/last
            length = struct.unpack_from("<I", data, pos)[0]
            fr = bytearray(data[pos:pos + length])
            struct.pack_into("<I", fr, 24, 0xFFFFFFFF)
            data[pos:pos + length] = v2spec.fix_crc(bytes(fr))
        f.seek(0)
        f.write(data)
    code = (f"import tidelog\n"
            f"with tidelog.open({log_path!r}, durability='none') as log:\n"
            f"    log.append(b'next')\n"
            f"    print(log.end_offset, bytes(log.read({end - 1}).value).decode())\n"
            f"    try:\n"
            f"        log.read(3)\n"
            f"    except tidelog.CorruptLogError as e:\n"
            f"        print('corrupt', e.offset)\n")
    assert run_child(code) == [str(end + 1), "end", "corrupt", "3"]


def test_index_checks_stop_at_a_count_past_R(log_path):
    """verify's index check and repair's (index_problems, rebuild_indexes) compared a slot per
    claimed record of each frame: a forged frame of 2**32 - 1 empty values in a sealed segment
    cost ~7 s, one per segment. They stop at a frame taking its segment past R (rule 8) now.
    In a child process: 20 segments with such a frame each."""
    segs = [[Frame([Rec(b"g", None, 1)] * 3), Frame([Rec(b"", None, 2)] * 10)]
            for _ in range(21)]
    b = v2spec.write_log(log_path, segs, clean=True)
    for s in b.segs[:-1]:
        pos = s.frames[1][0]
        with open(s.path, "r+b") as f:
            f.seek(pos)
            fr = bytearray(f.read(struct.unpack_from("<I", s.data, pos)[0]))
            struct.pack_into("<I", fr, 24, 0xFFFFFFFF)
            f.seek(pos)
            f.write(v2spec.fix_crc(bytes(fr)))
    code = (f"import tidelog\n"
            f"with tidelog.open({log_path!r}, readonly=True) as log:\n"
            f"    print(len(log.index_problems()))\n")
    assert run_child(code, timeout=60) == ["0"]  # (the walk stops at the damage, verify reports it)


def test_salvage_yields_every_record_of_each_valid_frame(log_path):
    """repair --salvage-to's reader: a damaged frame loses its records only; every record of
    every other frame (multi-form, keys None and b"", per-record timestamps) comes out once,
    in offset order."""
    with tidelog.open(log_path, segment_bytes=1 << 16, durability="none") as log:
        log._frame_limit = 400
        vals = [b"%04d" % i * (1 + i % 5) for i in range(300)]
        keys = [None if i % 3 == 0 else b"k" * (i % 3 - 1) for i in range(300)]
        log.append_batch(vals, keys=keys, timestamps=list(range(300)))
    frames = spec_frames(seg_bytes(log_path))
    victim_pos, victim = frames[len(frames) // 2]
    flip(log_path, SEG0, victim_pos + victim["c_values"] + 1)
    lost = set(range(victim["base"], victim["base"] + victim["n"]))
    with tidelog.open(log_path, readonly=True) as r:
        got = [(x.offset, x.key, x.timestamp, bytes(x.value)) for x in r._salvage()]
    want = [(i, keys[i], i, vals[i]) for i in range(300) if i not in lost]
    assert got == want and len(lost) > 1


def write_headless_empty_frame(path, count):
    """A 64 KiB segment holding 3 records, then a frame (valid CRC) of `count` empty values
    that cost no byte each, whose segment header is damaged (a bit of its creation time):
    the capacity it stated is unknown. The frame is written small, then its count forged (a
    Built would list every claimed record). Returns the end offset, 3 + count."""
    good = Frame([Rec(b"g%d" % i, None, 1) for i in range(3)])
    v2spec.write_log(path, [[good, Frame([Rec(b"", None, 1)] * 2)]], clean=True)
    with open(os.path.join(path, SEG0), "r+b") as f:
        data = bytearray(f.read(4096))
        frame = bytearray(data[136:136 + struct.unpack_from("<I", data, 136)[0]])
        struct.pack_into("<I", frame, 24, count)
        f.seek(136)
        f.write(v2spec.fix_crc(bytes(frame)))
        f.seek(24)
        f.write(bytes([data[24] ^ 1]))
    with open(os.path.join(path, "tidelog.ctl"), "r+b") as f:
        f.seek(24)
        f.write(struct.pack("<qq", 3 + count, 3 + count))
    return 3 + count


@pytest.mark.parametrize("past", [0, 1])
def test_salvage_holds_a_segment_whose_header_is_damaged_to_R_of_its_size(log_path, tmp_path,
                                                                           past):
    """Rule 8 for salvage when the segment header is damaged: R of the file's size (its
    capacity, as a writer makes it), not of the largest capacity a segment may have (R of
    that is about 2**29: a forged frame of empty values made that many records). At the
    edge: a segment of exactly R records is salvaged whole; one record more and the frame is
    lost."""
    end = write_headless_empty_frame(log_path, R_64K - 3 + past)
    report = tidelog.salvage(log_path, str(tmp_path / "out"))
    if past:
        assert report.records == 3 and report.lost == [(3, end)]
    else:
        assert report.records == R_64K and report.lost == []


def test_salvage_loses_a_forged_count_of_2_28_in_a_segment_whose_header_is_damaged(log_path):
    """The far case: a frame claiming 2**28 empty records yielded every one of them (~20 s
    here; `repair --salvage-to` then copied them all); now it is lost at once. In a child
    process (the hang was the symptom)."""
    write_headless_empty_frame(log_path, 1 << 28)
    code = (f"import tidelog\n"
            f"with tidelog.open({log_path!r}, readonly=True) as r:\n"
            f"    print(sum(1 for _ in r._salvage()))\n")
    assert run_child(code) == ["3"]


def test_salvage_loses_a_frame_reaching_the_next_segments_base(log_path):
    """Rule 8 (no overlaps) for salvage: a forged frame (valid CRC) of empty values in segment 0
    whose count, within R, runs past segment 1's base took segment 1's offsets, and segment
    1's records were then skipped as already yielded (100 empty records out, the 5 real ones
    lost). Now such a frame is damage: the 3 good records of segment 0 and the 5 of segment 1
    come out, and only the forged frame's offsets are lost."""
    good = Frame([Rec(b"g%d" % i, None, 1) for i in range(3)])
    b = v2spec.write_log(log_path, [[good, Frame([Rec(b"", None, 1)] * 2)],
                                    [Frame([Rec(b"r%d" % i, None, 1) for i in range(5)])]])
    assert b.segs[1].base == 5
    with open(os.path.join(log_path, SEG0), "r+b") as f:
        data = f.read(4096)
        frame = bytearray(data[136:136 + struct.unpack_from("<I", data, 136)[0]])
        struct.pack_into("<I", frame, 24, 100)        # offsets 3..102
        f.seek(136)
        f.write(v2spec.fix_crc(bytes(frame)))
    with tidelog.open(log_path, readonly=True) as r:
        got = [(x.offset, bytes(x.value)) for x in r._salvage()]
    assert got == [(0, b"g0"), (1, b"g1"), (2, b"g2")] + [(5 + i, b"r%d" % i) for i in range(5)]


@pytest.mark.parametrize("kind", ["key-length", "length"])
def test_readers_report_every_check_code_as_damage(log_path, kind):
    """Every check result is CorruptLogError for readers, never a crash or a silent end: the
    codes of a bad key length and a bad length once equalled the values that Cython functions
    declared `except -2` / `except -1` use to say "an exception is set" (a read crashed, a
    cursor stopped early as if at the end)."""
    bad = bytearray(v2spec.single(1, Rec(b"abcdefgh", None, 1)))
    if kind == "key-length":
        struct.pack_into("<i", bad, 24, 0x7CFFFFFF)     # KEYS clear, key length set: rule 2
    else:
        struct.pack_into("<I", bad, 0, 20)              # below a header: rule 1
    v2spec.write_log(log_path, [[Frame([Rec(b"good", None, 1)], form="single"),
                                 v2spec.fix_crc(bytes(bad)) if kind != "length" else bytes(bad),
                                 Frame([Rec(b"next", None, 1)], form="single")]])
    with tidelog.open(log_path, readonly=True) as r:
        assert bytes(r.read(0).value) == b"good"
        with pytest.raises(tidelog.CorruptLogError):
            r.read(1)
        with pytest.raises(tidelog.CorruptLogError):
            list(r.cursor())
