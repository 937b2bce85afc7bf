"""A Log keeps only a few sealed segments mapped: a long scan's memory stays bounded, and what was
handed out (views, records, batches, cursors) keeps working when its segment is unmapped."""
import os
import random

import tidelog


def seg_mappings(path):
    """Mappings of this log's segment files in this process (deleted ones included)."""
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if path in line and ".seg" in line)


def make(path, n=3000):
    with tidelog.open(path, durability="none", segment_bytes=8192) as log:
        for i in range(n):
            log.append(b"%06d" % i + b"." * 94)
        return len(log.segments())


def test_a_scan_keeps_few_segments_mapped(log_path):
    nseg = make(log_path)
    assert nseg > 30
    with tidelog.open(log_path, readonly=True) as r:
        r._max_mapped = 3
        cur = r.cursor(0)
        peak = 0
        n = 0
        while True:
            b = cur.read_batch(max_records=50)
            if not len(b):
                break
            n += len(b)
            peak = max(peak, seg_mappings(log_path))
        assert n == 3000
        assert peak <= 3 + 2                     # the LRU, plus the batch and cursor's own
        for rec in r.cursor(0):
            assert bytes(rec.value[:6]) == b"%06d" % rec.offset
        assert seg_mappings(log_path) <= 5


def test_views_and_cursors_survive_their_segment_being_unmapped(log_path):
    make(log_path)
    with tidelog.open(log_path, readonly=True) as r:
        r._max_mapped = 1
        view = r.read(5).value
        rec = r.read(6)
        batch = r.cursor(0).read_batch(max_records=10)
        cur = r.cursor(0)
        next(cur)
        for off in random.Random(1).sample(range(100, 3000), 200):    # evicts segment 0
            assert bytes(r.read(off).value[:6]) == b"%06d" % off
        assert bytes(view[:6]) == b"000005"
        assert bytes(rec.value[:6]) == b"000006"
        assert bytes(batch.values[9][:6]) == b"000009"
        assert [bytes(x.value[:6]) for x in (next(cur), next(cur))] == [b"000001", b"000002"]
        assert int(r.offset_for_time(0)) == 0


def test_writer_reads_old_segments_and_keeps_appending(log_path):
    with tidelog.open(log_path, durability="batch", segment_bytes=8192) as log:
        log._max_mapped = 2
        for i in range(3000):
            log.append(b"%06d" % i + b"." * 94)
            if i % 97 == 0:
                off = random.randrange(0, i + 1)
                assert bytes(log.read(off).value[:6]) == b"%06d" % off
        log.sync()
        assert [r.offset for r in log.cursor(0)] == list(range(3000))
    with tidelog.open(log_path) as log:
        assert log.end_offset == 3000


def test_threads_reading_while_segments_are_mapped_and_unmapped(log_path):
    """Threads of one process look records up while each lookup maps a segment and unmaps
    another (one mapped at a time): mapping lets other threads run, and a segment being mapped
    must not be unmapped under it (this crashed the interpreter before the fix)."""
    import threading
    with tidelog.open(log_path, durability="none", segment_bytes=8192) as log:
        for i in range(20000):
            log.append(b"%06d" % i + b"." * 60)
    errors = []
    with tidelog.open(log_path, readonly=True) as r:
        r._max_mapped = 1

        def reader(seed):
            rng = random.Random(seed)
            try:
                for _ in range(20000):
                    o = rng.randrange(20000)
                    assert bytes(r.read(o).value[:6]) == b"%06d" % o
                cur = r.cursor(rng.randrange(20000))
                for rec in cur:
                    assert bytes(rec.value[:6]) == b"%06d" % rec.offset
            except Exception as e:          # pragma: no cover - reported below
                errors.append(e)
        ts = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    assert not errors, errors[0]
