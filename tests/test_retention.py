"""Retention: whole sealed segments deleted by hand (truncate_before) or by policy (retain_bytes,
retain_seconds), while readers in this and other processes read them."""
import os
import time

import pytest

import tidelog
from conftest import run_python, spawn_python


def fill(log, n, size=100, ts=None):
    for i in range(n):
        log.append(b"%08d" % i + b"x" * (size - 8), timestamp=ts)


def seg_files(path):
    return sorted(f for f in os.listdir(path) if f.endswith(".seg"))


def test_truncate_before_deletes_whole_segments_only(log_path):
    with tidelog.open(log_path, durability="none", segment_bytes=8192) as log:
        fill(log, 1000)
        bases = [b for b, _ in log.segments()]
        assert len(bases) > 5
        cut = bases[3] + 5                     # inside segment 3: segments 0..2 go
        assert log.truncate_before(cut) == bases[3]
        assert log.start_offset == bases[3] and len(log) == 1000 - bases[3]
        assert [b for b, _ in log.segments()] == bases[3:]
        assert len(seg_files(log_path)) == len(bases) - 3
        assert not any(f.startswith(f"{bases[0]:020d}") for f in os.listdir(log_path))
        with pytest.raises(tidelog.OffsetOutOfRangeError):
            log.read(bases[3] - 1)
        assert bytes(log.read(bases[3]).value[:8]) == b"%08d" % bases[3]
        assert log.truncate_before(0) == bases[3]                   # below start: nothing
        assert log.truncate_before(log.end_offset) == bases[-1]     # never the active one
        assert [b for b, _ in log.segments()] == bases[-1:]
        with pytest.raises(ValueError, match="offset"):
            log.truncate_before(log.end_offset + 1)
        with pytest.raises(TypeError, match="offset"):
            log.truncate_before("5")
        fill(log, 10)
    with tidelog.open(log_path) as log:                  # the new start survives a reopen
        assert log.start_offset == bases[-1] and log.end_offset == 1010
        assert [r.offset for r in log.cursor()][0] == bases[-1]


def test_readonly_log_cannot_truncate(log_path):
    with tidelog.open(log_path) as log:
        log.append(b"x")
    with tidelog.open(log_path, readonly=True) as r:
        with pytest.raises(tidelog.TidelogError):
            r.truncate_before(0)


def test_cursor_below_start_gets_offset_out_of_range(log_path):
    with tidelog.open(log_path, durability="none", segment_bytes=8192) as log:
        fill(log, 500)
        cur = log.cursor(0)
        log.truncate_before(400)
        with pytest.raises(tidelog.OffsetOutOfRangeError):
            next(cur)
        with pytest.raises(tidelog.OffsetOutOfRangeError):
            cur.read_batch()
        with pytest.raises(tidelog.OffsetOutOfRangeError):
            cur.seek(0)


def test_views_outlive_retention_of_their_segment(log_path):
    with tidelog.open(log_path, durability="none", segment_bytes=8192) as log:
        fill(log, 500)
        view = log.read(1).value
        batch = log.cursor(0).read_batch()
        log.truncate_before(400)
        assert bytes(view[:8]) == b"00000001"
        assert bytes(batch.values[0][:8]) == b"00000000"
        assert batch.values_array("V100")[2].tobytes()[:8] == b"00000002"


def test_retention_while_another_process_reads(log_path):
    """A reader in another process scans while the writer deletes the segments under it: it reads
    on (its mappings stay valid) or gets OffsetOutOfRangeError for what is gone, never a crash
    or a damaged record."""
    with tidelog.open(log_path, durability="none", segment_bytes=8192) as log:
        fill(log, 2000)
        p = spawn_python("""
            import sys, tidelog
            log = tidelog.open(sys.argv[1], readonly=True)
            print("ready", flush=True)
            ok = gone = 0
            for rnd in range(200):
                try:
                    # an explicit offset may fall below start_offset meanwhile (its error is
                    # the expected one); "earliest" never fails to open
                    cur = log.cursor(0) if rnd % 2 else log.cursor("earliest")
                    for rec in cur:
                        assert bytes(rec.value[:8]) == b"%08d" % rec.offset
                        ok += 1
                except tidelog.OffsetOutOfRangeError:
                    gone += 1
                for off in range(0, 5000, 97):
                    try:
                        assert bytes(log.read(off).value[:8]) == b"%08d" % off
                    except tidelog.OffsetOutOfRangeError:
                        gone += 1
            print("done", ok, gone, log.start_offset, flush=True)
        """, log_path)
        assert p.stdout.readline().strip() == "ready"
        i = 2000
        while p.poll() is None and i < 200_000:
            fill_from = i
            for j in range(fill_from, fill_from + 200):
                log.append(b"%08d" % j + b"x" * 92)
            i += 200
            log.truncate_before(i - 1000)
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert out.startswith("done")
        assert log.start_offset > 0


def test_retain_bytes_policy_applies_at_roll_and_open(log_path):
    seg = 8192
    with tidelog.open(log_path, durability="none", segment_bytes=seg) as log:
        fill(log, 1000)
        n = len(log.segments())
    with tidelog.open(log_path, durability="none", segment_bytes=seg,
                      retain_bytes=3 * seg) as log:
        assert len(log.segments()) == 3 and len(seg_files(log_path)) == 3
        start = log.start_offset
        assert start > 0
        fill(log, 1000)
        assert len(log.segments()) <= 3
        assert log.start_offset > start
        # what remains is a gap-free suffix
        offs = [r.offset for r in log.cursor()]
        assert offs == list(range(log.start_offset, log.end_offset))
    assert n > 3


def test_retain_seconds_policy(log_path):
    old = time.time_ns() - 3600 * 10 ** 9
    with tidelog.open(log_path, durability="none", segment_bytes=8192) as log:
        fill(log, 300, ts=old)                      # an hour old
        fill(log, 300)                              # now
        n = len(log.segments())
    with tidelog.open(log_path, durability="none", segment_bytes=8192,
                      retain_seconds=60) as log:
        assert len(log.segments()) < n
        first = log.read(log.start_offset)
        assert log.start_offset <= 300              # the segment holding the newest old record
        for b, _ in log.segments()[1:]:             # ... and no older one stays
            assert log.read(b).timestamp > old or b < 300
    with pytest.raises(ValueError, match="retain_seconds"):
        tidelog.open(log_path, retain_seconds=0)
    with pytest.raises(TypeError, match="retain_bytes"):
        tidelog.open(log_path, retain_bytes=1.5)


def test_interrupted_retention_is_finished_on_open(log_path):
    """The new start is persisted before any file is deleted; a crash in between leaves old
    segments below it, which the next writer deletes (and never mistakes for a gap)."""
    with tidelog.open(log_path, durability="none", segment_bytes=8192) as log:
        fill(log, 1000)
        bases = [b for b, _ in log.segments()]
    import shutil
    keep = os.path.join(os.path.dirname(log_path), "keep")
    shutil.copytree(log_path, keep)
    with tidelog.open(log_path, durability="none", segment_bytes=8192) as log:
        log.truncate_before(bases[4])
    # put the deleted files back, as if the process died after persisting the new start
    for f in os.listdir(keep):
        if f.endswith((".seg", ".idx", ".tix")) and not os.path.exists(os.path.join(log_path, f)):
            shutil.copy(os.path.join(keep, f), os.path.join(log_path, f))
    assert len(seg_files(log_path)) == len(bases)
    with tidelog.open(log_path, durability="none", segment_bytes=8192) as log:
        assert log.start_offset == bases[4]
        assert len(seg_files(log_path)) == len(bases) - 4
        assert [r.offset for r in log.cursor()] == list(range(bases[4], 1000))


def test_missing_first_segment_is_still_corruption(log_path):
    with tidelog.open(log_path, durability="none", segment_bytes=8192) as log:
        fill(log, 1000)
        first = log.segments()[0][1]
    os.unlink(first)
    with pytest.raises(tidelog.CorruptLogError):
        tidelog.open(log_path)
