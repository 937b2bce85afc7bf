"""The pretoucher (ext/tl_toucher.h): a thread that faults in the pages ahead of a
durability="none" writer. It must never change what is read back, never outlive the mapping it
touches, stop when the log starts syncing, and leave a log that a kill -9 at any moment
recovers to everything published. Kill cycles: TIDELOG_PRETOUCH_CYCLES (default 60)."""
import errno
import os
import platform
import random
import signal
import sys
import time

import pytest

import tidelog
from conftest import read_pipe_lines

CYCLES = int(os.environ.get("TIDELOG_PRETOUCH_CYCLES", "60"))


def kernel_has_populate_write():
    """MADV_POPULATE_WRITE came with Linux 5.14."""
    if sys.platform != "linux":
        return False
    major, minor = (int(x) for x in platform.release().split(".")[:2])
    return (major, minor) >= (5, 14)


def value(off):
    return (b"%08d" % off) * (1 + off % 37)


def test_runs_ahead_and_reads_back_exactly(log_path):
    # The thread is woken only for a writer fast enough (tl_toucher.h: window / 2 bytes within
    # slow_ns) and then has to be scheduled: on a loaded machine (other tests, other processes)
    # one round of ~10 MB may see it populate little. So rounds go on until it has populated
    # more than 1 MiB, or 120 s have passed (then the assertion fails as before).
    has_populate = kernel_has_populate_write()
    deadline = time.monotonic() + 120
    n = 0
    with tidelog.open(log_path, durability="none", segment_bytes=1 << 21) as log:
        assert log._pretoucher is not None
        while True:
            for i in range(n, n + 60000, 20):           # ~10 MB over about 5 segments, in
                log.append_batch([value(o) for o in range(i, i + 20)])   # batches stored
            for i in range(n + 60000, n + 70000):       # through the mapping, then singles
                log.append(value(i))
            n += 70000
            populated, err = log._pretoucher
            if not has_populate or err != 0 or populated > 1 << 20:
                break
            if time.monotonic() > deadline:
                break
        if has_populate:
            assert err == 0 and populated > 1 << 20, (populated, err, n)
        else:
            assert err in (0, errno.EINVAL)
        assert [bytes(r.value) for r in log.cursor()] == [value(o) for o in range(n)]
    with tidelog.open(log_path, readonly=True) as log:
        assert log.end_offset == n
        assert all(bytes(log.read(o).value) == value(o) for o in range(0, n, 7))
        assert log._index_problems() == []


def test_only_without_syncs(tmp_path):
    for mode in ("batch", "always"):         # their syncs would write the zeros ahead
        with tidelog.open(str(tmp_path / mode), durability=mode) as log:
            assert log._pretoucher is None
    path = str(tmp_path / "none")
    with tidelog.open(path, durability="none") as log:
        log.append(b"x")
        assert log._pretoucher is not None
        log.sync()                                      # a log that syncs: the thread stops
        assert log._pretoucher is None
        log.append(b"y")
        assert [bytes(r.value) for r in log.cursor()] == [b"x", b"y"]
    with tidelog.open(path, readonly=True) as log:
        assert log._pretoucher is None


def test_start_and_stop_many_times(tmp_path):
    # the thread starts and stops with every open and close, with and without appends in
    # between, also while it is populating (close right after a burst)
    path = str(tmp_path / "log")
    n = 0
    for cycle in range(40):
        log = tidelog.open(path, durability="none", segment_bytes=1 << 20)
        if cycle % 3:
            log.append_batch([b"v" * 200] * 2000)
            n += 2000
        if cycle % 5 == 0:
            log._abandon()                              # as a crash would
        else:
            log.close()
    with tidelog.open(path, readonly=True) as log:
        assert log.end_offset == n


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_child_lets_go_of_the_parents_thread(log_path):
    # the child's copy has no thread: its appends are refused (the writer is the parent's) and
    # its close() frees only memory; the parent's pretoucher goes on across rolls
    log = tidelog.open(log_path, durability="none", segment_bytes=1 << 20)
    log.append_batch([b"p" * 100] * 1000)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            try:
                log.append_batch([b"c" * 100] * 1000)
            except tidelog.LogForkedError:
                log.close()
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    for _ in range(20):                                 # rolls: the target changes
        log.append_batch([b"q" * 100] * 1000)
    log._abandon()
    with tidelog.open(log_path, durability="none") as log2:
        assert log2.end_offset == 21000
        assert bytes(log2.read(20999).value) == b"q" * 100


def writer(path, wfd, seed):
    """Forked child: append without calling sync() (the pretoucher keeps running), across rolls
    of small segments, report the published end after each step. Never returns."""
    try:
        rng = random.Random(seed)
        log = tidelog.open(path, durability="none", segment_bytes=1 << 20)
        off = log.end_offset
        os.write(wfd, b"start %d\n" % off)
        while True:
            if rng.random() < 0.5:
                n = rng.randint(1, 300)
                assert log.append_batch([value(o) for o in range(off, off + n)]) == off
                off += n
            else:
                assert log.append(value(off)) == off
                off += 1
            os.write(wfd, b"end %d\n" % log.end_offset)
    except BaseException as e:          # pragma: no cover - reported through the pipe
        os.write(wfd, b"error %r\n" % e)
    finally:
        os._exit(1)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_kill9_keeps_everything_published(tmp_path):
    # the page cache outlives the process: every record the writer published must be there,
    # exact, and nothing after it (the touched pages ahead are zeros: no phantom records)
    seed = int(os.environ.get("TIDELOG_FAULT_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    path = None
    for cycle in range(CYCLES):
        if cycle % 20 == 0:
            path = str(tmp_path / f"log{cycle}")
            published = 0
        r, w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            writer(path, w, rng.randrange(1 << 30))
        os.close(w)
        time.sleep(rng.uniform(0.02, 0.12))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        lines = read_pipe_lines(r)
        errors = [l for l in lines if l.startswith(b"error")]
        assert not errors, f"seed {seed}: {errors[0]}"
        ends = [int(l.split()[1]) for l in lines if l.startswith(b"end ")]
        published = max([published] + ends)
        with tidelog.open(path, durability="none") as log:
            end = log.end_offset
            assert end >= published, f"seed {seed}: cycle {cycle}: end {end} < {published}"
            for off in list(range(max(0, end - 400), end)) + rng.sample(range(end), min(end, 100)):
                assert bytes(log.read(off).value) == value(off), f"seed {seed}: record {off}"
            assert sum(1 for _ in log.cursor(max(0, end - 1000))) == min(end, 1000)
        published = end
