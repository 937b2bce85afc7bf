"""Segment files as untrusted input, and how many of them a Log keeps mapped (issue 11, items 2
and 7): every mapping of a segment, a reader's or the writer's, first checks the file's size and
header (docs/FORMAT.md §2), and however many segments a log has, a Log keeps a bounded number of
them mapped, so a log of 30,000 segments opens and appends (vm.max_map_count is ~65,000)."""
import os
import struct
import time

import crc32c as oracle
import pytest

import tidelog
from conftest import run_python

MAX_SEGMENT_BYTES = (1 << 32) - 4096        # positions in a segment are u32 (FORMAT.md §2)
SEG_BYTES = 4096                            # the smallest segment_bytes


def seg_name(base, ext=".seg"):
    return "%020d%s" % (base, ext)


def segment_header(base, capacity, version=2, magic=b"TDLGSEG\0"):
    """The 64-byte segment header of FORMAT.md §2, built from the spec with the oracle CRC."""
    h = bytearray(64)
    h[0:8] = magic
    struct.pack_into("<IIqqq", h, 8, version, 64, base, 1_700_000_000_000_000_000, capacity)
    struct.pack_into("<I", h, 60, oracle.crc32c(bytes(h[:60])))
    return bytes(h)


def index_header(magic, stride, base):
    h = bytearray(64)
    h[0:8] = magic
    struct.pack_into("<IIq", h, 8, 2, stride, base)
    struct.pack_into("<I", h, 60, oracle.crc32c(bytes(h[:60])))
    return bytes(h)


def frame_bytes(offset, ts, value):
    """A frame without a key (FORMAT.md §2), with the oracle CRC, padded to 8 bytes."""
    length = 32 + len(value)
    body = struct.pack("<qqiHH", offset, ts, -1, 0x30, 0) + value     # single form
    f = struct.pack("<II", length, oracle.crc32c(body, oracle.crc32c(struct.pack("<I", length))))
    f += body
    return f + bytes(-len(f) % 8)


def set_ctl(path, **fields):
    """Overwrite control page fields (FORMAT.md §1)."""
    at = {"flags": (12, "<I"), "start": (16, "<q"), "end": (24, "<q"), "durable": (32, "<q"),
          "active_base": (40, "<q"), "active_pos": (48, "<q")}
    with open(os.path.join(path, "tidelog.ctl"), "r+b") as f:
        for name, v in fields.items():
            off, fmt = at[name]
            f.seek(off)
            f.write(struct.pack(fmt, v))


def live_mappings(path):
    """Mappings in this process of the log's segment and index files (deleted ones included)."""
    n = 0
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split(maxsplit=5)
            name = fields[5].strip().removesuffix(" (deleted)") if len(fields) == 6 else ""
            if name.startswith(path + "/") and name.endswith((".seg", ".idx", ".tix")):
                n += 1
    return n


# ---------------------------------------------------------------- item 2: size and header checks

def make_oversized_segment(path, size):
    """A log of records 0 and 1 in one segment of `size` bytes (a sparse file): record 0's value
    runs to byte 2**32 + 8, where record 1 lies. Every frame and the header are valid; only the
    size is not (positions are u32: record 1's value would be read at byte 40)."""
    with tidelog.open(path, segment_bytes=8192, durability="none") as log:
        log.append(b"placeholder")
    seg = os.path.join(path, seg_name(0))
    for ext in (".idx", ".tix"):
        os.unlink(seg[:-4] + ext)
    len0 = (1 << 32) - 56                        # < 2**32, as rule 1 asks
    pos1 = 64 + len0                             # = 2**32 + 8
    head0 = struct.pack("<qqiHH", 0, 1, -1, 0x30, 0)       # single form
    crc0 = oracle.crc32c(head0, oracle.crc32c(struct.pack("<I", len0)))
    zeros = bytes(64 << 20)
    left = len0 - 32                             # record 0's value: zeros (a hole)
    while left:
        n = min(left, len(zeros))
        crc0 = oracle.crc32c(zeros if n == len(zeros) else zeros[:n], crc0)
        left -= n
    secret = b"RECORD-1" * 8
    with open(seg, "w+b") as f:
        f.truncate(size)
        f.write(segment_header(0, size))
        f.seek(64)
        f.write(struct.pack("<II", len0, crc0) + head0)
        f.seek(pos1)
        f.write(frame_bytes(1, 2, secret))
    set_ctl(path, end=2, durable=2, active_pos=pos1 + 32 + len(secret))
    return seg, secret


def test_a_reader_refuses_a_segment_larger_than_the_maximum(log_path):
    """A crafted sparse segment > 4 GiB: read_batch stored record 1's value position as u32 and
    handed out bytes 40.. of the file (header and record 0's frame header) as its value, bytes
    no CRC covered. Now every read refuses the file, by name."""
    seg, secret = make_oversized_segment(log_path, (1 << 32) + 4096)
    with tidelog.open(log_path, readonly=True) as r:
        assert r.end_offset == 2
        for attempt in (lambda: r.read(1), lambda: r.read(0),
                        lambda: r.cursor(1).read_batch(), lambda: r.cursor(0).read_batch(),
                        lambda: list(r.cursor(0)), lambda: r.offset_for_time(0)):
            with pytest.raises(tidelog.CorruptLogError) as ei:
                attempt()
            assert ei.value.path == seg and ei.value.offset == 0
            assert "larger than a segment can be" in str(ei.value)
    with pytest.raises(tidelog.CorruptLogError):          # and so does a writer
        tidelog.open(log_path, durability="none")
    assert os.path.getsize(seg) == (1 << 32) + 4096       # which changed nothing


@pytest.mark.parametrize("readonly", [False, True])
def test_a_segment_name_beyond_the_largest_offset_is_damage(log_path, readonly):
    """A file named like a segment whose 20 digits exceed 2**63 - 1 (no offset is that large):
    CorruptLogError naming it, from the writer's open and from a reader; it was an
    OverflowError ("Python int too large to convert to C long") out of tidelog.open."""
    with tidelog.open(log_path, durability="none") as log:
        log.append(b"a")
    name = "99999999999999999999.seg"
    with open(os.path.join(log_path, name), "wb") as f:
        f.write(bytes(4096))
    with pytest.raises(tidelog.CorruptLogError, match="segment name beyond") as e:
        with tidelog.open(log_path, readonly=readonly) as log:
            log.read(0)
    assert e.value.path == os.path.join(log_path, name)


def _log_at_base(path, base):
    """A log of one empty segment whose base (file name, header, control page) is `base`."""
    import sys
    sys.path.insert(0, os.path.dirname(__file__))
    import v2spec
    os.makedirs(path)
    with open(v2spec.seg_path(path, base), "wb") as f:
        f.write(v2spec.segment(base, [], 1 << 16).data)
    with open(os.path.join(path, "tidelog.ctl"), "wb") as f:
        f.write(v2spec.control(base, base, base, 64, 1 << 16, clean=True))


def test_offsets_near_the_int64_limit_never_wrap(tmp_path):
    """A forged log whose segment starts at 2**63 - 10: its appends went on to negative offsets
    (end_offset -9223372036854775806, and a roll names a file no listing matches). The writer's
    open refuses offsets past 2**62 (no log appends that many) as damage; a log just below it
    appends, and refuses to roll past it."""
    bad = str(tmp_path / "bad")
    _log_at_base(bad, (1 << 63) - 10)
    with pytest.raises(tidelog.CorruptLogError, match="beyond the largest"):
        with tidelog.open(bad, durability="none") as log:
            log.append_batch([b"x"] * 20)
    near = str(tmp_path / "near")
    _log_at_base(near, (1 << 62) - 5)
    with tidelog.open(near, durability="none", segment_bytes=1 << 16) as log:
        log.append_batch([b""] * 100)
        assert log.end_offset == (1 << 62) + 95
        with pytest.raises(tidelog.TidelogError, match="beyond the largest"):
            for _ in range(10):
                log.append_batch([b""] * 8000, atomic=False)
        assert log.end_offset > 0 and len(log.segments()) == 1


def test_a_segment_of_the_maximum_size_is_read(log_path):
    """The bound is the largest size whose positions fit in u32 (log.py's MAX_SEGMENT_BYTES)."""
    assert tidelog.log.MAX_SEGMENT_BYTES == MAX_SEGMENT_BYTES
    with tidelog.open(log_path, segment_bytes=8192, durability="none") as log:
        log.append(b"placeholder")
    seg = os.path.join(log_path, seg_name(0))
    for ext in (".idx", ".tix"):
        os.unlink(seg[:-4] + ext)
    with open(seg, "w+b") as f:
        f.truncate(MAX_SEGMENT_BYTES)
        f.write(segment_header(0, MAX_SEGMENT_BYTES) + frame_bytes(0, 5, b"v0")
                + frame_bytes(1, 6, b"v1"))
    set_ctl(log_path, end=2, durable=2)
    with tidelog.open(log_path, readonly=True) as r:
        assert bytes(r.read(1).value) == b"v1"
        assert [bytes(v) for v in r.cursor(0).read_batch().values] == [b"v0", b"v1"]
    with pytest.raises(ValueError, match="segment_bytes"):
        tidelog.open(log_path + "2", segment_bytes=MAX_SEGMENT_BYTES + 8)


def make_three_segments(path):
    with tidelog.open(path, segment_bytes=SEG_BYTES, durability="none") as log:
        for i in range(30):
            log.append(b"r%04d" % i + b"." * 995)
        bases = [b for b, _ in log.segments()]
    assert len(bases) >= 3
    return bases


def damage_header(path, base, how):
    p = os.path.join(path, seg_name(base))
    with open(p, "r+b") as f:
        h = bytearray(f.read(64))
        if how == "magic":
            h[0:8] = b"NOTASEG\0"
        elif how == "crc":
            h[24] ^= 1                          # a bit of the creation time
        else:
            if how == "version0":
                struct.pack_into("<I", h, 8, 0)
            elif how == "version3":
                struct.pack_into("<I", h, 8, 3)
            elif how == "base":
                struct.pack_into("<q", h, 16, base + 1)
            struct.pack_into("<I", h, 60, oracle.crc32c(bytes(h[:60])))   # a valid CRC
        f.seek(0)
        f.write(h)
    return p


@pytest.mark.parametrize("how", ["magic", "crc", "version0", "version3", "base"])
def test_readers_check_segment_headers(log_path, how):
    """Readers never looked at a segment's header: one whose magic, version, base or CRC is
    wrong was read as if it were the segment its name says."""
    bases = make_three_segments(log_path)
    seg = damage_header(log_path, bases[1], how)
    want = tidelog.FormatVersionError if how == "version3" else tidelog.CorruptLogError
    with tidelog.open(log_path, readonly=True) as r:
        assert bytes(r.read(0).value[:5]) == b"r0000"          # segment 0 is fine
        for attempt in (lambda: r.read(bases[1]), lambda: r.cursor(bases[1]).read_batch(),
                        lambda: list(r.cursor(0))):
            with pytest.raises(want) as ei:
                attempt()
            assert seg in str(ei.value)
            if want is tidelog.CorruptLogError:
                assert ei.value.path == seg and ei.value.offset == bases[1]
        assert bytes(r.read(bases[2]).value[:5]) == b"r%04d" % bases[2]   # segment 2 too
    with pytest.raises(want):
        tidelog.open(log_path, durability="none")


def test_salvage_still_reads_a_segment_whose_header_is_damaged(log_path, tmp_path, run):
    """`tidelog repair --salvage-to` copies every CRC-valid record: a damaged header does not
    make it skip the segment's records."""
    bases = make_three_segments(log_path)
    damage_header(log_path, bases[1], "crc")
    out = str(tmp_path / "salvaged")
    r = run("repair", "--salvage-to", out, log_path)
    assert r.exit_code == 0, r.output
    assert "salvaged 30 records" in r.output
    with tidelog.open(out, readonly=True) as log:
        assert [bytes(x.value[:5]) for x in log.cursor()] == [b"r%04d" % i for i in range(30)]


# ---------------------------------------------------------------- item 7: bounded mappings

def make_many_segments(path, n, ts_base=None, clean=True):
    """A log of n segments of SEG_BYTES, one 100-byte record each, written as the writer writes
    them (header, frame, .idx and .tix), but directly: a writer would take ~1-5 ms a roll."""
    with tidelog.open(path, segment_bytes=SEG_BYTES, durability="none"):
        pass                                    # the control page
    for ext in (".seg", ".idx", ".tix"):
        os.unlink(os.path.join(path, seg_name(0, ext)))
    ts_base = time.time_ns() if ts_base is None else ts_base
    idx_size = 64 + ((SEG_BYTES - 64) // 32 // 4 + 1) * 4
    tix_size = 64 + ((SEG_BYTES - 64) // 32 // 64 + 1) * 8
    hdr = bytearray(segment_header(0, SEG_BYTES))
    for b in range(n):
        ts = ts_base + b
        f = frame_bytes(b, ts, b"%08d" % b + b"." * 92)
        struct.pack_into("<q", hdr, 16, b)
        struct.pack_into("<I", hdr, 60, oracle.crc32c(bytes(hdr[:60])))
        for ext, data, size in (
                (".seg", bytes(hdr) + f, SEG_BYTES),
                (".idx", index_header(b"TDLGIDX\0", 4, b) + struct.pack("<I", 64), idx_size),
                (".tix", index_header(b"TDLGTIX\0", 64, b) + struct.pack("<q", ts), tix_size)):
            fd = os.open(os.path.join(path, seg_name(b, ext)), os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.write(fd, data)
                # the rest is zero: a hole (writing 4 KiB per file is ten times slower here)
                if ext == ".seg" and b == n - 1:
                    os.posix_fallocate(fd, 0, size)     # the writer's active segment
                else:
                    os.ftruncate(fd, size)
            finally:
                os.close(fd)
    set_ctl(path, start=0, end=n, durable=n, active_base=n - 1, active_pos=64 + len(f),
            flags=1 if clean else 0)


MANY = int(os.environ.get("TIDELOG_TEST_MANY_SEGMENTS", "500"))


@pytest.mark.parametrize("clean", [True, False], ids=["clean", "after-crash"])
def test_a_writer_keeps_few_segments_mapped_however_many_the_log_has(log_path, clean):
    """Opening checked every segment through its own mappings and kept them all: 3 per segment
    (.seg, .idx, .tix), so ~21,000 segments exceeded vm.max_map_count and open() failed.
    TIDELOG_TEST_MANY_SEGMENTS=30000 runs the tests of many segments at that size (20-40 s a
    test here; 9cca872 fails them with ENOMEM at ~21,700 segments)."""
    make_many_segments(log_path, MANY, clean=clean)
    with tidelog.open(log_path, segment_bytes=SEG_BYTES, durability="none") as log:
        bound = 3 * (log._max_mapped + 1)         # the LRU's sealed segments and the active one
        assert (log.start_offset, log.end_offset) == (0, MANY)
        assert live_mappings(log_path) <= bound
        for i in range(40):                     # rolls: a segment of its own each
            assert log.append(b"new%05d" % i + b"+" * 3000) == MANY + i
        assert live_mappings(log_path) <= bound
        for off in (0, MANY // 2, MANY - 1):
            assert bytes(log.read(off).value[:8]) == b"%08d" % off
        assert bytes(log.read(MANY + 39).value[:8]) == b"new00039"
        assert live_mappings(log_path) <= bound
    assert live_mappings(log_path) == 0
    with tidelog.open(log_path, readonly=True) as r:
        n = 0
        cur = r.cursor(0)
        while len(b := cur.read_batch()):
            n += len(b)
        assert n == MANY + 40
        assert live_mappings(log_path) <= 3 * r._max_mapped + 3


def test_retention_by_time_over_many_segments_keeps_few_mapped(log_path):
    """retain_seconds looks at each old segment's newest timestamp: every one it looked at
    stayed mapped until the deletion (at TIDELOG_TEST_MANY_SEGMENTS=30000: ENOMEM at open)."""
    make_many_segments(log_path, MANY, ts_base=1_000_000_000)    # records of 1970
    with tidelog.open(log_path, segment_bytes=SEG_BYTES, durability="none",
                      retain_seconds=3600) as log:
        assert log.start_offset == MANY - 1         # everything but the active segment
        assert log.append(b"after") == MANY
        assert live_mappings(log_path) <= 3 * (log._max_mapped + 1)
    assert sorted(os.listdir(log_path))[0] == seg_name(MANY - 1, ".idx")


def test_a_writer_that_rolls_many_times_keeps_few_segments_mapped(log_path):
    """Every segment a writer sealed stayed mapped for the writer's lifetime. Sealed segments
    are read-only: mapped again for a read, they keep no descriptor open."""
    with tidelog.open(log_path, segment_bytes=SEG_BYTES, durability="none") as log:
        for i in range(200):
            log.append(b"%06d" % i + b"." * 3000)
            if i % 50 == 49:
                log.sync()                      # (closes the sealed segments' descriptors)
        assert len(log.segments()) == 200
        assert live_mappings(log_path) <= 3 * (log._max_mapped + 1)
        log.sync()
        fds = len(os.listdir("/proc/self/fd"))
        assert [bytes(r.value[:6]) for r in log.cursor(0)] == [b"%06d" % i for i in range(200)]
        for i in range(0, 200, 7):
            assert bytes(log.read(i).value[:6]) == b"%06d" % i
        assert live_mappings(log_path) <= 3 * (log._max_mapped + 1)
        assert len(os.listdir("/proc/self/fd")) <= fds


def test_a_repair_scans_every_segment_with_few_mappings_and_descriptors(log_path):
    """A repair scans the whole log: each scanned segment kept a writable mapping and an open
    descriptor until the end of the scan (EMFILE past `ulimit -n` segments). Run under a limit
    of 64 descriptors, over 500 segments."""
    make_many_segments(log_path, 500, clean=False)
    proc = run_python("""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        import tidelog
        log = tidelog.open(sys.argv[1], repair="truncate", durability="none")
        assert log.repaired is None and log.end_offset == 500, (log.repaired, log.end_offset)
        maps = [ln for ln in open("/proc/self/maps") if sys.argv[1] + "/0" in ln]
        assert len(maps) <= 3 * (log._max_mapped + 1), len(maps)
        assert bytes(log.read(0).value[:8]) == b"00000000"
        log.append(b"after")
        log.close()
        print("ok")
        """, log_path, check=False)
    assert proc.returncode == 0 and proc.stdout == "ok\n", proc.stderr[-2000:]
