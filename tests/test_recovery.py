"""Reopen paths: a clean close is trusted without a scan (and damage is still caught by the read
that reaches it); an unclean stop is scanned, a torn tail cut, damage before the durable point
reported with file, position and offset."""
import os
import struct

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
    with tidelog.open(path, segment_bytes=1 << 20, durability="none") as log:
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
