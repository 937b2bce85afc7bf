"""Regressions from a review: failed opens change nothing, closing races with writers and readers,
damaged or truncated files never crash the interpreter."""
import collections
import gc
import os
import shutil
import struct
import sys
import threading
import time

import pytest

import tidelog
from conftest import snapshot_dir


def segments(path):
    return sorted(f for f in os.listdir(path) if f.endswith(".seg"))


def test_failed_open_leaves_the_files_alone(log_path):
    with tidelog.open(log_path, segment_bytes=4096, durability="none") as log:
        for i in range(300):
            log.append(b"x" * 50)
    os.unlink(os.path.join(log_path, segments(log_path)[2]))
    before = snapshot_dir(log_path)
    for _ in range(2):
        with pytest.raises(tidelog.CorruptLogError):
            tidelog.open(log_path)
        gc.collect()
        assert snapshot_dir(log_path) == before      # no "clean" control page written to it


def test_close_while_a_batch_is_being_prepared(log_path):
    log = tidelog.open(log_path, durability="batch")
    log.append(b"a")

    def gen():
        yield b"x"
        log.close()                                  # user code run by append_batch
        yield b"y"
    with pytest.raises(tidelog.LogClosedError):
        log.append_batch(gen())
    with tidelog.open(log_path, readonly=True) as r:
        assert r.end_offset == 1


def test_concurrent_close_calls(log_path):
    for _ in range(10):
        shutil.rmtree(log_path, ignore_errors=True)
        log = tidelog.open(log_path, durability="none")
        log.append_batch([b"z" * 100] * 1000)
        errors = []

        def closer():
            try:
                log.close()
            except Exception as e:                  # pragma: no cover - reported below
                errors.append(e)
        ths = [threading.Thread(target=closer) for _ in range(3)]
        for t in ths:
            t.start()
        for t in ths:
            t.join()
        assert not errors
        with tidelog.open(log_path) as again:
            assert again.end_offset == 1000


def test_batch_mode_log_dropped_without_close_is_collected(log_path):
    log = tidelog.open(log_path, durability="batch")
    log.append(b"a")
    del log
    gc.collect()
    with tidelog.open(log_path) as log:              # the lock was released by __del__
        assert log.end_offset == 1


def test_segment_cut_to_an_odd_size(log_path):
    with tidelog.open(log_path, segment_bytes=4096, durability="none") as log:
        for i in range(5):
            log.append(b"v" * (i + 1))
    seg = os.path.join(log_path, segments(log_path)[0])
    os.truncate(seg, 257)                            # someone cut the file mid-frame
    for readonly in (True, False):
        try:
            with tidelog.open(log_path, readonly=readonly) as log:
                for r in log.cursor():
                    bytes(r.value)
                log.read(log.end_offset - 1) if log.end_offset else None
        except tidelog.CorruptLogError:
            pass


def test_stale_clean_control_page_with_damage_in_a_sealed_segment(log_path):
    with tidelog.open(log_path, segment_bytes=4096, durability="none") as log:
        for i in range(250):
            log.append(b"x" * 40)
    with open(os.path.join(log_path, "tidelog.ctl"), "r+b") as f:
        f.seek(24)
        f.write(struct.pack("<qq", 5, 5))            # a stale hint, still marked clean
    with open(os.path.join(log_path, segments(log_path)[1]), "r+b") as f:
        f.seek(64 + 8 * 80 + 40)
        f.write(b"\xff")
    with tidelog.open(log_path, durability="none") as log:   # recovery cuts after durable 5
        n = log.end_offset
        log.append(b"after")                          # writes into a formerly sealed segment
    with tidelog.open(log_path, readonly=True) as log:
        assert log.end_offset == n + 1 and bytes(log.read(n).value) == b"after"


def test_readers_in_threads_while_the_writer_rolls(log_path):
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        w = tidelog.open(log_path, segment_bytes=4096, durability="none")
        w.append(b"x")
        r = tidelog.open(log_path, readonly=True)
        stop = False
        errors = collections.Counter()

        def reader():
            while not stop:
                e = r.end_offset
                try:
                    r.read(e - 1)
                except Exception as ex:              # pragma: no cover - reported below
                    errors[repr(ex)[:120]] += 1
        ths = [threading.Thread(target=reader) for _ in range(2)]
        for t in ths:
            t.start()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.5:
            w.append_batch([b"y" * 40] * 300, atomic=False)
        stop = True
        for t in ths:
            t.join()
        assert not errors, errors
        r.close()
        w.close()
    finally:
        sys.setswitchinterval(old)


def test_wait_durable_woken_by_close(log_path):
    log = tidelog.open(log_path, durability="none")
    off = log.append(b"a")
    got = []
    th = threading.Thread(target=lambda: got.append(log.wait_durable(off, timeout=30)))
    th.start()
    time.sleep(0.05)
    log.close()                                      # close syncs: the waiter sees it
    th.join()
    assert got == [True]


def test_close_racing_appends_in_always_mode(log_path):
    for _ in range(4):
        shutil.rmtree(log_path, ignore_errors=True)
        log = tidelog.open(log_path, durability="always")
        stop = threading.Event()

        def writer():
            while not stop.is_set():
                try:
                    log.append(b"r" * 50)
                except tidelog.LogClosedError:
                    return
        ths = [threading.Thread(target=writer) for _ in range(3)]
        for t in ths:
            t.start()
        time.sleep(0.05)
        log.close()
        stop.set()
        for t in ths:
            t.join()
        with open(os.path.join(log_path, "tidelog.ctl"), "rb") as f:
            ctl = f.read(64)
        flags, _, end, durable = struct.unpack_from("<IqqQ", ctl, 12)
        assert not (flags & 1) or end == durable      # "clean" only when everything is durable
        with tidelog.open(log_path) as again:
            assert again.end_offset >= durable


def test_junk_after_a_sealed_segments_last_record_is_ignored(log_path):
    with tidelog.open(log_path, segment_bytes=4096, durability="none") as log:
        for i in range(100):
            log.append(b"r%04d" % i + b"." * 90)
    seg = os.path.join(log_path, segments(log_path)[0])
    with open(seg, "r+b") as f:
        f.seek(4090)
        f.write(b"\x7f")                               # unused space of a sealed segment
    with tidelog.open(log_path) as log:
        assert [bytes(r.value)[:5] for r in log.cursor()] == [b"r%04d" % i for i in range(100)]
    with tidelog.open(log_path, repair="truncate") as log:
        assert log.repaired is None and log.end_offset == 100


def test_stale_index_entry_is_only_a_hint(log_path):
    with tidelog.open(log_path, segment_bytes=1 << 16, durability="none") as log:
        for i in range(100):
            log.append(b"v%04d" % i)
    idx = os.path.join(log_path, "%020d.idx" % 0)
    with open(idx, "r+b") as f:                       # entry 2 (record 32) points elsewhere,
        f.seek(64 + 2 * 4)                            # at a frame with a wrong offset field
        f.write(struct.pack("<I", 64 + 40 * 31))
    with tidelog.open(log_path) as log:               # reads and the writer's checks walk instead
        assert bytes(log.read(32).value) == b"v0032"
        assert bytes(log.read(40).value) == b"v0040"
    mark = os.path.join(log_path, "tidelog.ctl")
    with open(mark, "r+b") as f:
        f.seek(12)
        f.write(struct.pack("<I", 0))                 # unclean: recovery starts from the index
    with tidelog.open(log_path) as log:
        assert log.end_offset == 100


def test_reader_notices_a_segment_file_replaced_by_a_repair(log_path):
    with tidelog.open(log_path, segment_bytes=4096, durability="none") as log:
        for i in range(100):
            log.append(b"old-%04d" % i + b"x" * 80)
    r = tidelog.open(log_path, readonly=True)
    assert bytes(r.read(40).value)[:8] == b"old-0040"
    with open(os.path.join(log_path, segments(log_path)[0]), "r+b") as f:
        f.seek(64 + 10 * 120 + 40)
        f.write(b"\xff")
    with tidelog.open(log_path, segment_bytes=4096, durability="none", repair="truncate") as w:
        assert w.end_offset == 10
        for i in range(10, 60):
            w.append(b"new-%04d" % i + b"y" * 80)
        assert bytes(r.read(40).value)[:8] == b"new-0040"
    r.close()


def test_reopen_with_larger_segment_bytes_and_an_empty_active_segment(tmp_path):
    """The active segment is empty and was made with a smaller segment_bytes: a record that fits
    the new size replaces it instead of being refused; readers follow."""
    path = str(tmp_path / "l")
    tidelog.open(path, durability="none", segment_bytes=4096).close()     # one empty segment
    early = tidelog.open(path, readonly=True)
    early_cur = early.cursor(0)
    assert list(early_cur) == []                 # it has mapped the small segment
    with tidelog.open(path, durability="none", segment_bytes=1 << 16) as log:
        log.append(b"z" * 20000)                 # refused with ValueError before the fix
        assert [len(x.value) for x in early_cur] == [20000]
    early.close()
    with tidelog.open(path, readonly=True) as r:
        assert [len(x.value) for x in r.cursor(0)] == [20000]
    path = str(tmp_path / "l2")
    with tidelog.open(path, durability="none", segment_bytes=4096) as log:
        log.append(b"a" * 3000)
        log.append(b"b" * 3000)                  # rolls: the second segment holds it
        log.append(b"c" * 3000)                  # rolls again
    r = tidelog.open(path, readonly=True)
    cur = r.cursor(0)
    assert [bytes(x.value[:1]) for x in cur] == [b"a", b"b", b"c"]
    with tidelog.open(path, durability="none", segment_bytes=1 << 16) as log:
        log.append(b"d" * 20000)                 # does not fit the 4 KiB active segment
        log.append(b"e" * 20000)
        assert [bytes(x.value[:1]) for x in log.cursor(0)] == [b"a", b"b", b"c", b"d", b"e"]
        assert [bytes(x.value[:1]) for x in cur] == [b"d", b"e"]
    with tidelog.open(path) as log:
        assert [len(x.value) for x in log.cursor(0)] == [3000] * 3 + [20000] * 2
    r.close()


def test_a_reader_opening_while_a_writer_creates_the_log_never_sees_foreign_files(tmp_path):
    # a reader looked for tidelog.ctl, found none, then listed the directory after the writer
    # had made it: NotALogError ("holds files that are not a tidelog log", 114 of 300 here)
    # instead of LogNotFoundError or an open log
    n = 300
    pid = os.fork()
    if pid == 0:
        try:
            for i in range(n):
                tidelog.open(str(tmp_path / ("l%d" % i))).close()
        finally:
            os._exit(0)
    try:
        i = 0
        while i < n:
            try:
                tidelog.open(str(tmp_path / ("l%d" % i)), readonly=True).close()
                i += 1
            except tidelog.LogNotFoundError:
                pass
    finally:
        _, status = os.waitpid(pid, 0)
    assert status == 0
