"""Attacks on allocation steps taken early (ext/prealloc.pxi: the writer asks for the next step
at a mark, _wcap, GROW_AHEAD or half a step before its storing limit _whard; a refusal at the
mark is silent, a refusal at _whard is LogFullError). A real full disk (tests/smallfs.py) that
fills and empties at random under single appends, atomic and non-atomic batches of many sizes,
huge records, rolls and reopens, with a reader process following the whole time; and a writer
SIGKILLed at random moments on that full disk, then reopened. Every outcome is checked against a
model of what each call reported: no SIGBUS anywhere, no record lost or changed, a refused call
wrote nothing (or, non-atomic, a prefix). Seeds per configuration of the full-disk run: 3, and
6 in the long runs (TIDELOG_CRASH_CYCLES above its default 200, as for tests/test_crash.py)."""
import os

import pytest

import smallfs                      # tests/smallfs.py: a small tmpfs in a private mount namespace

COMMON = r"""
import os, random, signal, struct, sys, time, zlib
import tidelog

mnt, seed, seg, dur = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rnd = random.Random(seed)
path = os.path.join(mnt, "log")
filler = os.path.join(mnt, "filler")
KiB, MiB = 1 << 10, 1 << 20


def val(n, tag):
    # self-checking: a CRC of the body, then the body
    body = (b"<%d>" % tag) * (n // 4 + 1)
    body = body[:max(n - 4, 0)]
    return struct.pack("<I", zlib.crc32(body)) + body


def good(v):
    v = bytes(v)
    return len(v) >= 4 and struct.unpack("<I", v[:4])[0] == zlib.crc32(v[4:])


def size():
    return rnd.choice([4, 20, 100, 1000, 4000, 9000, 60 * KiB, 300 * KiB, 1 * MiB,
                       int(1.9 * MiB), 3 * MiB])


def small():
    return rnd.choice([4, 20, 100, 500, 1000, 4000, 16000])


def free():
    st = os.statvfs(mnt)
    return st.f_bavail * st.f_frsize


def fill():
    try:
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    except OSError:
        return
    try:
        while True:
            os.write(fd, b"f" * 65536)
    except OSError:
        pass
    try:
        while True:
            os.write(fd, b"f" * 4096)
    except OSError:
        pass
    os.close(fd)


def unfill():
    try:
        sz = os.path.getsize(filler)
    except FileNotFoundError:
        return
    os.truncate(filler, rnd.choice([0, sz // 2, max(sz - 256 * KiB, 0), max(sz - 2 * MiB, 0),
                                    max(sz - 40 * KiB, 0)]))


def op(log, tag, report=None):
    # one random call; returns the values now in the log past what was there before it
    before = log.end_offset
    k = rnd.random()
    try:
        if k < 0.4:
            v = val(size() if rnd.random() < 0.3 else small(), tag)
            vs = [v]
            log.append(v)
        elif k < 0.7:
            vs = [val(small() if rnd.random() < 0.9 else size(), tag) for _ in
                  range(rnd.choice([1, 2, 10, 100, 1000]))]
            log.append_batch(vs)
        else:
            vs = [val(small() if rnd.random() < 0.8 else size(), tag) for _ in
                  range(rnd.choice([1, 5, 50, 500, 3000]))]
            log.append_batch(vs, atomic=False)
        full = False
    except tidelog.LogFullError:
        full = True
    except ValueError as e:         # an atomic batch larger than a segment: nothing written
        assert "do not fit" in str(e), e
        full = None
    n = log.end_offset - before
    if full is not False and k < 0.7:
        assert n == 0, (n, k)
    assert 0 <= n <= len(vs)
    if full is False:
        assert n == len(vs)
    return vs[:n], full
"""

FULL_DISK = COMMON + r"""
def reader(stop):
    try:
        follow(stop)
    except BaseException:
        import traceback
        print("reader failed:", traceback.format_exc().replace("\n", " | "), flush=True)
        os._exit(4)


def follow(stop):
    # a reader process following the writer: every record it sees passes its check
    seen = 0
    r = None
    parent = os.getppid()
    while True:
        last = os.path.exists(stop) or os.getppid() != parent    # (the writer failed)
        try:
            if r is None:
                r = tidelog.open(path, readonly=True)
            for rec in r.cursor(seen):
                if not good(rec.value):
                    print("bad record", rec.offset, flush=True)
                    os._exit(3)
                seen = rec.offset + 1
        except (tidelog.LogNotFoundError, FileNotFoundError):
            pass
        if last:
            print("reader saw", seen, flush=True)
            os._exit(0)
        time.sleep(0.001)


stop = os.path.join(os.path.dirname(mnt.rstrip("/")), "stop-%d" % os.getpid())
pid = os.fork()
if pid == 0:
    reader(stop)
model = []
fulls = silent = 0
log = tidelog.open(path, durability=dur, segment_bytes=seg)
for tag in range(300):
    r = rnd.random()
    if r < 0.08:
        fill()
    elif r < 0.14:
        unfill()
    elif r < 0.18:
        log.close()
        log = tidelog.open(path, durability=dur, segment_bytes=seg)
        assert log.end_offset == len(model)
    else:
        got, full = op(log, tag)
        model += got
        fulls += bool(full)
    assert log.end_offset == len(model), (log.end_offset, len(model))
log.close()
with tidelog.open(path, readonly=True) as r:
    assert r.end_offset == len(model)
    for i, rec in enumerate(r.cursor(0)):
        assert bytes(rec.value) == model[i], i
open(stop, "w").close()
_, status = os.waitpid(pid, 0)
assert status == 0, ("reader", status)
print("ok", len(model), "full", fulls, flush=True)
"""

FULL_DISK_SEEDS = 6 if int(os.environ.get("TIDELOG_CRASH_CYCLES", "200")) > 200 else 3


@pytest.mark.parametrize("seed", range(FULL_DISK_SEEDS))
@pytest.mark.parametrize("seg,dur", [(4 << 20, "none"), (64 << 20, "none"), (1 << 20, "batch"),
                                     (320 << 10, "none"), (16 << 20, "always")])
def test_full_disk_at_and_between_the_mark_and_the_limit(tmp_path, seed, seg, dur):
    proc = smallfs.run_on_small_tmpfs(tmp_path, FULL_DISK, str(seed), str(seg), dur, size="10m")
    if proc.returncode != 0:        # (pytest.fail: the whole output, not a truncated repr)
        pytest.fail("exit %d\nstdout: %s\nstderr: %s" % (proc.returncode, proc.stdout,
                                                         proc.stderr[-3000:]))
    words = proc.stdout.split()
    assert "ok" in words, proc.stdout
    assert int(words[words.index("full") + 1]) > 0, proc.stdout     # the disk did fill


CRASH = COMMON + r"""
# a writer SIGKILLed at random on a disk that fills and empties; each reopen finds every
# record that a call returned with, unchanged, and at most a whole call more
model = []
for cycle in range(12):
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        log = tidelog.open(path, durability=dur, segment_bytes=seg)
        assert log.end_offset == len(model)
        for tag in range(10 ** 6):
            r = rnd.random()
            if r < 0.1:
                fill()
            elif r < 0.18:
                unfill()
            else:
                got, _ = op(log, cycle * 10 ** 6 + tag)
                os.write(wfd, b"%d\n" % log.end_offset)
    os.close(wfd)
    time.sleep(rnd.random() * 0.3)
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
    ends = [int(x) for x in os.read(rfd, 1 << 24).split()]
    os.close(rfd)
    unfill()
    with tidelog.open(path, durability=dur, segment_bytes=seg) as log:
        n = log.end_offset
        assert n >= (ends[-1] if ends else len(model)), (n, ends[-1:])
        for rec in log.cursor(min(len(model), n)):
            assert good(rec.value), rec.offset
        for i in range(0, min(len(model), n), 97):
            assert bytes(log.read(i).value) == model[i], i
        model = model[:n] + [bytes(rec.value) for rec in log.cursor(len(model))]
print("ok", len(model), flush=True)
"""


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("seg", [4 << 20, 64 << 20])
def test_sigkill_during_steps_on_a_full_disk(tmp_path, seed, seg):
    proc = smallfs.run_on_small_tmpfs(tmp_path, CRASH, str(seed), str(seg), "none", size="10m")
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr[-3000:])
    assert "ok" in proc.stdout.split(), proc.stdout
