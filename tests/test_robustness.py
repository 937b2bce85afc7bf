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
