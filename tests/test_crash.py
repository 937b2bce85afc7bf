"""Kill -9 a real writer at random moments: every acknowledged (synced) record survives
byte-exact, every published record survives a process crash, and the log reopens as a gap-free
prefix of what was appended. The writer is a fork of this process (no interpreter start-up per
cycle), so hundreds of cycles fit in CI. Cycles per mode: TIDELOG_CRASH_CYCLES (default 200)."""
import hashlib
import os
import random
import signal
import sys
import time

import pytest

import tidelog
from conftest import read_pipe_lines

CYCLES = int(os.environ.get("TIDELOG_CRASH_CYCLES", "200"))
# the variants of the multi-frame loop (headers; compression, which carries headers too) run a
# third as many cycles each: the same writer and checks, nine of them (TIDELOG_CRASH_CYCLES=1000
# gives each 333)
VARIANT_CYCLES = max(40, CYCLES // 3)
FRESH_EVERY = 40          # a new log directory every so many cycles keeps the log small


def value(off):
    return hashlib.blake2b(b"%d" % off, digest_size=8).digest() * (1 + off % 13)


def writer(path, mode, wfd, seed):
    """Runs in the forked child: append forever (single records and batches, across segment
    rolls), report the durable offset after syncs. Never returns."""
    try:
        rng = random.Random(seed)
        log = tidelog.open(path, segment_bytes=1 << 14, durability=mode, sync_interval=0.001)
        off = log.end_offset
        os.write(wfd, b"start %d\n" % off)
        i = 0
        while True:
            if rng.random() < 0.3:
                n = rng.randint(1, 40)
                assert log.append_batch([value(o) for o in range(off, off + n)]) == off
                off += n
            else:
                assert log.append(value(off)) == off
                off += 1
            if mode == "none" and rng.random() < 0.2:
                log.sync()
            os.write(wfd, b"ack %d\n" % log.durable_offset)
            i += 1
    except BaseException as e:          # pragma: no cover - reported through the pipe
        os.write(wfd, b"error %r\n" % e)
    finally:
        os._exit(1)


def read_acks(rfd):
    lines = read_pipe_lines(rfd)
    errors = [l for l in lines if l.startswith(b"error")]
    assert not errors, errors[0]
    start = [int(l.split()[1]) for l in lines if l.startswith(b"start ")]
    acked = [int(l.split()[1]) for l in lines if l.startswith(b"ack ")]
    return (start[0] if start else None), max(acked, default=0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("mode", ["none", "batch", "always"])
def test_kill9_loses_nothing_acknowledged(tmp_path, mode):
    seed = int(os.environ.get("TIDELOG_FAULT_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    stats = {"cycles": 0, "kills_during_open": 0, "acknowledged": 0}
    path = None
    for cycle in range(CYCLES):
        if cycle % FRESH_EVERY == 0:
            path = str(tmp_path / f"log{cycle}")
            acked, verified = 0, 0
        r, w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            writer(path, mode, w, rng.randrange(1 << 30))
        os.close(w)
        if rng.random() < 0.8:
            wait_for_start(r)                 # most kills hit appends and syncs ...
        time.sleep(rng.uniform(0.0, 0.03))    # ... some hit the open (recovery) itself
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        start, new_acked = read_acks(r)
        if start is None:
            stats["kills_during_open"] += 1
        else:
            assert start >= acked, f"seed {seed}: cycle {cycle} reopened at {start} < {acked}"
        acked = max(acked, new_acked)
        # odd cycles: a reader looks at the crashed log as it is and the next writer recovers
        # it; even cycles: a writer recovers it here
        readonly = cycle % 2 == 1
        with tidelog.open(path, readonly=readonly, durability="none") as log:
            end = log.end_offset
            assert end >= acked, f"seed {seed}: cycle {cycle}: end {end} < acknowledged {acked}"
            if not readonly:
                assert log.durable_offset == end
            # the records new since the last check, and a sample of the older ones
            check = list(range(verified, end)) + rng.sample(range(end), min(end, 50))
            for off in check:
                assert bytes(log.read(off).value) == value(off), f"seed {seed}: record {off}"
            n = sum(1 for _ in log.cursor(max(0, end - 200)))
            assert n == min(end, 200)
            verified = end
        stats["cycles"] += 1
        stats["acknowledged"] = max(stats["acknowledged"], acked)
    assert stats["cycles"] == CYCLES and stats["acknowledged"] > 0, stats
    print(mode, stats)


def wait_for_start(rfd, timeout=10.0):
    """Block until the child has written its first line (it opened the log); the data stays in
    the pipe for read_acks."""
    import select
    select.select([rfd], [], [], timeout)


def nvalue(off):
    """The value of record `off` when it came in a numpy batch (rows of one size)."""
    return hashlib.blake2b(b"n%d" % off, digest_size=24).digest()


def key_of(off):
    return None if off % 7 == 0 else b"k" * (off % 5)


def hdr_of(off):
    """The headers of record `off` in the header-writing loops: none, or a few (a repeated
    name, an empty value, a non-ASCII name)."""
    if off % 3 == 0:
        return []
    return [("o", b"%d" % off), ("é", b""), ("o", b"x" * (off % 17))][:1 + off % 3]


def multi_writer(path, mode, wfd, seed, headers=False, compression=None):
    """Like writer(), with format v2's batches: lists (values of varying size, keys with None
    and b"", per-record timestamps now and then) and numpy arrays, cut into groups of several
    frames by a small _frame_limit; each batch announced ("b first n") before it is appended."""
    import numpy as np
    try:
        rng = random.Random(seed)
        log = tidelog.open(path, segment_bytes=1 << 15, durability=mode, sync_interval=0.001,
                           compression=compression)
        log._frame_limit = rng.choice([128, 512, 2048, 1 << 20])
        off = log.end_offset
        os.write(wfd, b"start %d\n" % off)
        while True:
            r = rng.random()
            if r < 0.35:
                n = rng.randint(2, 120)
                os.write(wfd, b"b %d %d\n" % (off, n))
                rows = np.frombuffer(b"".join(nvalue(o) for o in range(off, off + n)),
                                     np.uint8).reshape(n, 24)
                assert log.append_batch(rows) == off
                off += n
            elif r < 0.7:
                n = rng.randint(2, 120)
                os.write(wfd, b"b %d %d\n" % (off, n))
                tss = [o for o in range(off, off + n)] if rng.random() < 0.5 else None
                assert log.append_batch([value(o) for o in range(off, off + n)],
                                        keys=[key_of(o) for o in range(off, off + n)],
                                        timestamps=tss,
                                        headers=[hdr_of(o) for o in range(off, off + n)]
                                        if headers else None) == off
                off += n
            else:
                assert log.append(value(off), key=key_of(off),
                                  headers=hdr_of(off) if headers else None) == off
                off += 1
            if mode == "none" and rng.random() < 0.2:
                log.sync()
            os.write(wfd, b"ack %d\n" % log.durable_offset)
    except BaseException as e:          # pragma: no cover - reported through the pipe
        os.write(wfd, b"error %r\n" % e)
    finally:
        os._exit(1)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("mode", ["none", "batch", "always"])
def test_kill9_multi_frame_batches_are_whole_or_absent(tmp_path, mode, headers=False,
                                                        compression=None, cycles=CYCLES):
    """Format v2 groups (a batch in several frames chained by MORE) under SIGKILL: nothing
    acknowledged is lost, and the log never ends inside a batch (a torn group is cut whole)."""
    seed = int(os.environ.get("TIDELOG_FAULT_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    stats = {"cycles": 0, "kills_during_open": 0, "acknowledged": 0, "batches_cut": 0}
    path = None
    for cycle in range(cycles):
        if cycle % FRESH_EVERY == 0:
            path = str(tmp_path / f"log{cycle}")
            acked, verified = 0, 0
        r, w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            multi_writer(path, mode, w, rng.randrange(1 << 30), headers, compression)
        os.close(w)
        if rng.random() < 0.8:
            wait_for_start(r)
        time.sleep(rng.uniform(0.0, 0.03))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        lines = read_pipe_lines(r)
        errors = [l for l in lines if l.startswith(b"error")]
        assert not errors, errors[0]
        starts = [int(l.split()[1]) for l in lines if l.startswith(b"start ")]
        batches = [tuple(map(int, l.split()[1:])) for l in lines if l.startswith(b"b ")]
        new_acked = max([int(l.split()[1]) for l in lines if l.startswith(b"ack ")], default=0)
        if not starts:
            stats["kills_during_open"] += 1
        else:
            assert starts[0] >= acked, f"seed {seed}: cycle {cycle} reopened at {starts[0]} < {acked}"
        acked = max(acked, new_acked)
        readonly = cycle % 2 == 1
        with tidelog.open(path, readonly=readonly, durability="none") as log:
            end = log.end_offset
            assert end >= acked, f"seed {seed}: cycle {cycle}: end {end} < acknowledged {acked}"
            for first, n in batches:
                assert not first < end < first + n, \
                    f"seed {seed}: cycle {cycle}: the log ends at {end} inside batch {first}+{n}"
                stats["batches_cut"] += end == first
            check = list(range(verified, end)) + rng.sample(range(end), min(end, 50))
            for off in check:
                rec = log.read(off)
                v = bytes(rec.value)
                if v == nvalue(off):
                    assert rec.key is None and rec.headers == []
                else:
                    assert v == value(off) and rec.key == key_of(off), f"seed {seed}: record {off}"
                    assert rec.headers == (hdr_of(off) if headers else []), \
                        f"seed {seed}: headers of record {off}"
            n = sum(1 for _ in log.cursor(max(0, end - 200)))
            assert n == min(end, 200)
            verified = end
        stats["cycles"] += 1
        stats["acknowledged"] = max(stats["acknowledged"], acked)
    assert stats["cycles"] == cycles and stats["acknowledged"] > 0, stats
    print(mode, stats)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("mode", ["none", "batch", "always"])
def test_kill9_records_with_headers(tmp_path, mode):
    """Records with headers (issue 14: single frames and groups with header columns) under
    SIGKILL: what is acknowledged survives with its headers, batches are whole or absent."""
    test_kill9_multi_frame_batches_are_whole_or_absent(tmp_path, mode, headers=True,
                                                       cycles=VARIANT_CYCLES)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("mode", ["none", "batch", "always"])
@pytest.mark.parametrize("compression", ["zstd", "lz4"])
def test_kill9_compressed_frames(tmp_path, mode, compression):
    """Per-log compression (issue 14) under SIGKILL: compressed frames (and groups of them, with
    headers) recover as whole groups, nothing acknowledged is lost."""
    pytest.importorskip({"zstd": "zstandard", "lz4": "lz4"}[compression])
    test_kill9_multi_frame_batches_are_whole_or_absent(tmp_path, mode, headers=True,
                                                       compression=compression,
                                                       cycles=VARIANT_CYCLES)
