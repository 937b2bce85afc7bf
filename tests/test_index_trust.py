"""Index files are hints (FORMAT.md §3): damaged .tix / .idx files, real files damaged on disk
(zeroed entries under a valid header, as a power loss leaves them; entries scrambled out of
order; entries that disagree with the frames), must never give a wrong time lookup, make
retention delete a segment holding a recent record, or make a read / seek fail or return the
wrong record. Results are checked against a brute-force scan of the records."""
import os
import random
import struct
import time

import pytest

import tidelog

from conftest import run_python

SEG_BYTES = 8192            # 40-byte frames (1-byte values): ~200 records, 3-4 .tix entries each


def tix_files(path):
    return sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".tix"))


def idx_files(path):
    return sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".idx"))


def rewrite_entries(fname, size, fn):
    """Replace the entries (after the 64-byte header, which stays valid) by fn(entries)."""
    fmt = "<q" if size == 8 else "<I"
    with open(fname, "r+b") as f:
        data = f.read()
        n = (len(data) - 64) // size
        ents = [struct.unpack_from(fmt, data, 64 + size * j)[0] for j in range(n)]
        new = fn(ents)
        assert len(new) == n
        f.seek(64)
        f.write(b"".join(struct.pack(fmt, e) for e in new))


def written(ents):
    """How many leading entries are written (nonzero): the part of an index damage shuffles."""
    n = len(ents)
    while n and ents[n - 1] == 0:
        n -= 1
    return n


def zero_all(ents):
    return [0] * len(ents)


def zero_some(ents):        # as a power loss leaves them: some entries never reached the disk
    return [0 if j % 3 == 1 else e for j, e in enumerate(ents)]


def scramble(ents):
    n = written(ents)
    head = ents[:n]
    random.Random(n).shuffle(head)
    return head + ents[n:]


def reverse(ents):
    n = written(ents)
    return ents[:n][::-1] + ents[n:]


def shift_down(ents):       # each entry claims the next one's maximum (overstated)
    n = written(ents)
    return ents[1:n] + [ents[n - 1]] + ents[n:] if n else ents


def shift_up(ents):         # each entry claims the previous one's maximum (understated)
    n = written(ents)
    return ([ents[0] - 1] + ents[:n - 1] + ents[n:]) if n else ents


def lower(ents):            # in order, each a little below the truth
    n = written(ents)
    return [e - 3 for e in ents[:n]] + ents[n:]


def small(ents):            # in order, nonzero, but far below every timestamp
    n = written(ents)
    return list(range(1, n + 1)) + ents[n:]


def huge(ents):
    n = written(ents)
    return [10 ** 18] * n + ents[n:]


TIX_DAMAGE = [zero_all, zero_some, scramble, reverse, shift_down, shift_up, lower, small, huge]


def first_at(ts, t):
    return next((i for i, x in enumerate(ts) if x >= t), len(ts))


def timestamps(kind, n, seed):
    rnd = random.Random(seed)
    if kind == "monotonic":
        return [1000 + i for i in range(n)]
    if kind == "steps":                  # monotonic with repeats
        return [1000 + i // 7 for i in range(n)]
    if kind == "late":                   # mostly growing, some records from the past
        return [1000 + i if rnd.random() > 0.05 else 1000 + rnd.randrange(i + 1) for i in range(n)]
    return [rnd.randrange(1000, 3000) for _ in range(n)]       # "random"


def make_log(path, ts):
    with tidelog.open(path, durability="none", segment_bytes=SEG_BYTES) as log:
        log._multi_form = False         # one single-form frame per record: many segments
        log.append_batch([b"x"] * len(ts), timestamps=ts, atomic=False)
        assert len(log.segments()) > 3


def queries(ts):
    qs = {min(ts) - 1, max(ts), max(ts) + 1, 0, 1010, 10 ** 18}
    for t in ts[::37]:
        qs.update((t - 1, t, t + 1))
    return sorted(qs)


def check_time_lookups(path, ts):
    """offset_for_time and seek_time against a scan of the list, in a reader and a writer."""
    with tidelog.open(path, readonly=True) as r:
        for q in queries(ts):
            assert r.offset_for_time(q) == first_at(ts, q), q
        cur = r.cursor()
        for q in queries(ts)[::5]:
            cur.seek_time(q)
            want = first_at(ts, q)
            assert cur.position == want
            if want < len(ts):
                rec = next(cur)
                assert (rec.offset, rec.timestamp) == (want, ts[want])
    with tidelog.open(path, durability="none", segment_bytes=SEG_BYTES) as w:
        for q in queries(ts)[::3]:
            assert w.offset_for_time(q) == first_at(ts, q), q


def test_zeroed_time_index_gives_the_first_record_not_a_later_one(log_path):
    """The issue's case: every .tix entry 0 under a valid header (a power loss: the index files
    of sealed segments are never synced)."""
    with tidelog.open(log_path, durability="none") as log:
        for i in range(400):
            log.append(b"x", timestamp=1000 + i)
    for f in tix_files(log_path):
        rewrite_entries(f, 8, zero_all)
    with tidelog.open(log_path, readonly=True) as r:
        assert r.offset_for_time(1010) == 10
        cur = r.cursor()
        cur.seek_time(1010)
        assert next(cur).offset == 10


@pytest.mark.parametrize("damage", TIX_DAMAGE, ids=lambda f: f.__name__)
@pytest.mark.parametrize("kind", ["monotonic", "steps", "late", "random"])
def test_damaged_time_index_never_gives_a_wrong_answer(tmp_path, kind, damage):
    path = str(tmp_path / "log")
    ts = timestamps(kind, 1500, seed=len(kind))
    make_log(path, ts)
    for f in tix_files(path):
        rewrite_entries(f, 8, damage)
    check_time_lookups(path, ts)


def test_damaged_active_time_index_is_rebuilt_not_carried_on(log_path):
    """A writer reopening after a clean close seeds its running maximum from the active
    segment's last .tix entry: a zeroed one is not taken as the maximum (the entries written
    after it would understate every earlier record)."""
    ts = [5000] * 10 + [1000] * 100
    with tidelog.open(log_path, durability="none") as log:
        log.append_batch([b"x"] * len(ts), timestamps=ts, atomic=False)
    for f in tix_files(log_path):
        rewrite_entries(f, 8, zero_all)
    more = [1000] * 300
    with tidelog.open(log_path, durability="none") as log:
        log.append_batch([b"x"] * len(more), timestamps=more, atomic=False)
        assert log._index_problems() == []
    ts += more
    check_time_lookups(log_path, ts)


# ------------------------------------------------------------------ retention by time


def recent_middle_log(path, recent_at):
    """Old records, with recent ones (now) at the offsets in recent_at: the newest record of
    their segments is not the last one."""
    now = time.time_ns()
    old = now - 3600 * 10 ** 9
    ts = [now if i in recent_at else old for i in range(1000)]
    with tidelog.open(path, durability="none", segment_bytes=SEG_BYTES) as log:
        for t in ts:
            log.append(b"x", timestamp=t)
        bases = [b for b, _ in log.segments()]
    assert len(bases) >= 5
    return ts, bases


@pytest.mark.parametrize("damage", TIX_DAMAGE + [None], ids=lambda f: f.__name__ if f else "intact")
def test_retain_seconds_keeps_segments_with_recent_records(log_path, damage):
    """retain_seconds may delete a segment only when its CRC-checked frames show every record
    older than the cutoff; the time index is never asked."""
    recent = (10, 300)                   # in the 1st and 2nd segments, neither one's last record
    ts, bases = recent_middle_log(log_path, set(recent))
    assert bases[1] < recent[1] < bases[2]
    if damage is not None:
        for f in tix_files(log_path):
            rewrite_entries(f, 8, damage)
    with tidelog.open(log_path, durability="none", segment_bytes=SEG_BYTES,
                      retain_seconds=60) as log:
        assert log.start_offset == 0
        for off in recent:
            assert log.read(off).timestamp == ts[off]
    # and retention still works: without the recent records everything old goes
    with tidelog.open(log_path, durability="none", segment_bytes=SEG_BYTES) as log:
        log.truncate_before(bases[2])
    with tidelog.open(log_path, durability="none", segment_bytes=SEG_BYTES,
                      retain_seconds=60) as log:
        assert log.start_offset == bases[-1]


def test_retain_seconds_in_a_live_writer_with_indexes_zeroed_under_it(log_path):
    """The segments a writer filled itself, whose indexes are then zeroed on disk: retention
    at the following rolls keeps every segment holding a record newer than the cutoff."""
    now = time.time_ns()
    old = now - 3600 * 10 ** 9
    with tidelog.open(log_path, durability="none", segment_bytes=SEG_BYTES,
                      retain_seconds=60) as log:
        for i in range(600):
            log.append(b"x", timestamp=now if i == 250 else old)
        assert log.start_offset <= 250
        for f in tix_files(log_path):
            rewrite_entries(f, 8, zero_all)
        for i in range(600):
            log.append(b"x", timestamp=old)
        log._apply_retention()
        assert log.start_offset <= 250
        assert log.read(250).timestamp == now
        log.append(b"x", timestamp=now)
    # a writer that did not fill them reads the frames
    for f in tix_files(log_path):
        rewrite_entries(f, 8, zero_all)
    with tidelog.open(log_path, durability="none", segment_bytes=SEG_BYTES,
                      retain_seconds=60) as log:
        assert log.start_offset <= 250
        assert log.read(250).timestamp == now


# ------------------------------------------------------------------ offset index (.idx)


def idx_log(path, n=600):
    """Records whose 8-byte value is offset + 1: an .idx entry that points at a value holds an
    int64 equal to the offset it expects, so it passes the entry's offset check."""
    with tidelog.open(path, durability="none", segment_bytes=SEG_BYTES) as log:
        for k in range(n):
            log.append(struct.pack("<q", k + 1), timestamp=1000 + k)
        return [b for b, _ in log.segments()]


def into_values(ents):
    """Entry j points 24 bytes into the frame before its record (40-byte frames): 8 bytes
    further on lies that frame's value, offset + 1 = the offset entry j expects."""
    out = list(ents)
    for j in range(1, written(ents)):
        out[j] = ents[j] - 40 + 24
    return out


def past_the_frames(ents):
    return [e + 4096 if e else 0 for e in ents]


def idx_zero(ents):
    return [0] * len(ents)


def idx_scramble(ents):
    n = written(ents)
    head = ents[:n]
    random.Random(n).shuffle(head)
    return head + ents[n:]


IDX_DAMAGE = [into_values, past_the_frames, idx_zero, idx_scramble]


def check_reads(path, n):
    with tidelog.open(path, readonly=True) as r:
        for off in list(range(0, n, 7)) + [n - 1]:
            rec = r.read(off)
            assert rec.offset == off and bytes(rec.value) == struct.pack("<q", off + 1)
        cur = r.cursor()
        for off in list(range(0, n, 13)) + [n - 1]:
            cur.seek(off)
            rec = next(cur)
            assert rec.offset == off and bytes(rec.value) == struct.pack("<q", off + 1)
            cur.seek(off)
            b = cur.read_batch(5)
            assert len(b) >= 1 and list(b.offsets) == list(range(off, off + len(b)))
            assert list(b.timestamps) == [1000 + k for k in range(off, off + len(b))]


@pytest.mark.parametrize("damage", IDX_DAMAGE, ids=lambda f: f.__name__)
def test_damaged_offset_index_never_fails_a_read_or_a_seek(log_path, damage):
    """An .idx entry that is 0, out of order, past the frames or pointing into a value: read,
    seek + next and read_batch still give the right CRC-checked record (by walking)."""
    idx_log(log_path)
    for f in idx_files(log_path):
        rewrite_entries(f, 4, damage)
    check_reads(log_path, 600)


def test_damaged_frame_with_unusable_index_is_reported_not_a_hang(log_path):
    """Walking from the segment start (the index unusable) onto a frame with an impossible
    length is damage to report, not a reason to walk from the start again (forever)."""
    with tidelog.open(log_path, durability="none") as log:
        for _ in range(100):
            log.append(b"x" * 8)
    stem = os.path.join(log_path, "%020d" % 0)
    with open(stem + ".seg", "r+b") as f:
        f.seek(64 + 5 * 40)                          # frame 5: length out of bounds
        f.write(struct.pack("<I", 0xFFFFFF00))
    rewrite_entries(stem + ".idx", 4, idx_zero)
    proc = run_python("""
        import sys, tidelog
        with tidelog.open(sys.argv[1], readonly=True) as r:
            try:
                r.read(10)
            except tidelog.CorruptLogError as e:
                print("corrupt", e.offset, e.position)
        """, log_path, timeout=60)
    assert proc.stdout.split() == ["corrupt", "5", str(64 + 5 * 40)]


# ------------------------------------------------------------------ reporting stays


def test_verify_still_reports_damaged_indexes(log_path, run):
    ts = timestamps("late", 1500, seed=1)
    make_log(log_path, ts)
    rewrite_entries(tix_files(log_path)[0], 8, zero_all)
    rewrite_entries(idx_files(log_path)[1], 4, idx_scramble)
    res = run("verify", log_path)
    assert res.exit_code == 0
    assert "index file(s) to rebuild" in res.stdout
    assert res.stdout.count("entries wrong or missing") == 2
    res = run("repair", log_path)
    assert res.exit_code == 0
    res = run("verify", log_path)
    assert "to rebuild" not in res.stdout
    check_time_lookups(log_path, ts)
