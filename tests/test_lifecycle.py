"""A Log's lifecycle against other threads and other processes: close() racing readers and
appenders, and a Log inherited by a fork() child (issue 11, items 1, 3 and 4).

Races run many rounds with random timing; the outcome they check must hold every time. The ones
that could crash the interpreter (item 1) or fork run in a fresh interpreter, so that a crash
fails the test instead of killing pytest."""
import os
import random
import threading
import time

import pytest

import tidelog
from tidelog import LogClosedError

from conftest import run_python

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")


# ------------------------------------------------------------- close() racing readers (item 1)

READERS_VS_CLOSE = r"""
import os, random, sys, threading, time
import tidelog
from tidelog import LogClosedError, CorruptLogError, OffsetOutOfRangeError

path, rounds, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
w = tidelog.open(path, segment_bytes=4096, durability="none")
for i in range(300):
    w.append(b"%05d" % i + b"x" * 95, timestamp=1000 + i)
segs = w.segments()
w.close()
# a missing middle segment: reads of it take the error paths (listing again, mapping, raising)
mid, mid_path = segs[len(segs) // 2]
os.unlink(mid_path)
good = [b for b, _ in segs if b != mid]
sys.setswitchinterval(1e-6)          # switch threads as often as possible

def read_missing(r):
    r.read(mid)

def read_good(r):                    # maps segments again and again (one stays mapped)
    b = rng.choice(good)
    assert bytes(r.read(b).value)[:5] == b"%05d" % b

def cursor_missing(r):
    for _ in r.cursor(mid):
        pass

def batch_missing(r):
    r.cursor(mid).read_batch(10)

def by_time(r):
    r.offset_for_time(1000 + mid + 1)

kinds = [read_missing, read_good, cursor_missing, batch_missing, by_time]
wkinds = [read_good, lambda r: r.cursor(rng.choice(good)).read_batch(50), by_time]
whole = path + "-whole"                  # (a writer does not open with a segment missing)
with tidelog.open(whole, segment_bytes=4096, durability="none") as w:
    for i in range(300):
        w.append(b"%05d" % i + b"x" * 95, timestamp=1000 + i)
unexpected = []
for rnd in range(rounds):
    writer = rnd % 3 == 2                # a writer's Log read by other threads of its process
    r = tidelog.open(whole, durability="none") if writer else tidelog.open(path, readonly=True)
    r._max_mapped = 1
    def loop(op):
        while True:
            try:
                op(r)
            except LogClosedError:
                return                   # the only way out: close() won
            except (CorruptLogError, OffsetOutOfRangeError):
                pass                     # the missing segment (the log was open)
            except BaseException as e:
                unexpected.append(repr(e))
                return
    threads = [threading.Thread(target=loop, args=(rng.choice(wkinds if writer else kinds),))
               for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(rng.uniform(0, 0.003))
    r.close()
    for t in threads:
        t.join()
    try:                                 # after close() returned: always LogClosedError
        r.read(mid)
        unexpected.append("read after close")
    except LogClosedError:
        pass
assert not unexpected, unexpected[:5]
print("ok")
"""


def test_close_racing_readers_never_crashes(tmp_path):
    # a reader thread in read()/cursor/offset_for_time whose calls let other threads run (os
    # calls, mapping, listing the directory) while another thread closes the log: it gets
    # LogClosedError, never a segfault (9cca872: SIGSEGV within a few rounds)
    seed = random.randrange(1 << 30)
    proc = run_python(READERS_VS_CLOSE, tmp_path / "log", 150, seed, check=False, timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, (
        f"seed {seed}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}")


# ------------------------------------------------------- close() racing appenders (item 4)

@pytest.mark.parametrize("mode", ["always", "batch"])
def test_close_racing_appenders_ack_exactly_what_is_kept(tmp_path, mode):
    # every append either returns an offset whose record is in the reopened log, or raises
    # LogClosedError and left no record behind (a caller that retries must not duplicate)
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    for rnd in range(12):
        path = str(tmp_path / f"log{rnd}")
        # small segments and interval: "batch" appenders sync themselves after rolls
        log = tidelog.open(path, durability=mode, segment_bytes=1 << 14, sync_interval=0.0005)
        results = []

        def appender(t):
            i = 0
            while True:
                value = b"t%d-%d" % (t, i)
                i += 1
                try:
                    if i % 3:
                        results.append((value, log.append(value)))
                    else:
                        results.append((value, log.append_batch([value])))
                except LogClosedError:
                    results.append((value, None))
                    return
                except BaseException as e:          # pragma: no cover - reported below
                    results.append((value, e))
                    return

        threads = [threading.Thread(target=appender, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.001, 0.03))
        log.close()
        for t in threads:
            t.join()
        with tidelog.open(path, readonly=True) as r:
            kept = {bytes(rec.value): rec.offset for rec in r.cursor()}
        others = [(v, res) for v, res in results if res is not None and not isinstance(res, int)]
        assert not others, f"seed {seed}: {others[:3]}"
        acked = {v: off for v, off in results if off is not None}
        refused = [v for v, off in results if off is None]
        assert len(refused) == 4
        for v, off in acked.items():
            assert kept.get(v) == off, f"seed {seed} round {rnd}: acked {v} at {off}, kept " \
                                       f"{kept.get(v)}"
        raised_but_kept = [v for v in refused if v in kept]
        assert not raised_but_kept, (f"seed {seed} round {rnd}: {len(raised_but_kept)} appends "
                                     f"raised LogClosedError but their records are in the log")
        assert len(kept) == len(acked)


# ------------------------------------------------------------ a Log inherited by fork() (item 3)

FORK_CHILD = r"""
import gc, os, sys, threading
import tidelog
from tidelog import LogForkedError, LogLockedError, TidelogError

path, variant, mode = sys.argv[1], sys.argv[2], sys.argv[3]

def val(i):
    return b"%06d" % i * 10

w = tidelog.open(path, durability=mode, segment_bytes=1 << 14)
for i in range(10):
    w.append(val(i))
w.sync()
r = tidelog.open(path, readonly=True)          # the child inherits a reader too
go_r, go_w = os.pipe()
sys.stdout.flush()
pid = os.fork()
if pid == 0:
    os.close(go_w)
    os.read(go_r, 1)                   # the parent has appended and synced 10 more
    if variant == "close":
        w.close()
        r.close()
    elif variant == "gc":
        del w, r
        gc.collect()
    elif variant == "exit":
        pass                           # interpreter exit: __del__ closes them
    elif variant == "append":
        # every writing operation is refused, naming fork; reading a writer's stale copy too
        for op in (lambda: w.append(b"child"), lambda: w.append_batch([b"c"] * 50),
                   w.sync, lambda: w.truncate_before(5), lambda: w.read(0),
                   lambda: w.end_offset, lambda: w.wait_durable(0, 0.01)):
            try:
                op()
            except LogForkedError as e:
                assert "fork" in str(e), e
            else:
                os._exit(3)
        w.close()
        try:
            w.append(b"child")
            os._exit(4)
        except tidelog.LogClosedError:
            pass
    elif variant == "reader":
        # an inherited reader reads on (it writes nothing shared), and refuses appends
        assert r.end_offset == 20 and r.durable_offset == 20, (r.end_offset, r.durable_offset)
        assert [bytes(x.value) for x in r.cursor(0)] == [val(i) for i in range(20)]
        try:
            r.append(b"child")
            os._exit(5)
        except TidelogError:
            pass
        r.close()
        with tidelog.open(path, readonly=True) as own:
            assert own.end_offset == 20
        try:
            tidelog.open(path)
            os._exit(6)
        except LogLockedError:
            pass
    sys.exit(0)                        # a normal exit: finalizers run

os.close(go_r)
for i in range(10, 20):
    w.append(val(i))
w.sync()
seen, stop = [], threading.Event()

def sample():                           # durable_offset as a reader sees it, never backwards
    while not stop.is_set():
        seen.append(r.durable_offset)

t = threading.Thread(target=sample)
t.start()
os.write(go_w, b"x")
_, status = os.waitpid(pid, 0)
stop.set()
t.join()
assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child: {status}"
assert all(a <= b for a, b in zip(seen, seen[1:])), "durable_offset went backwards"
assert r.end_offset == 20 and r.durable_offset == 20, (r.end_offset, r.durable_offset)
assert [bytes(x.value) for x in r.cursor(0)] == [val(i) for i in range(20)]
try:                                    # the parent still holds the writer's lock
    tidelog.open(path)
    raise AssertionError("a second writer opened while the parent writes")
except LogLockedError:
    pass
for i in range(20, 30):                 # the parent writes on, undisturbed
    w.append(val(i))
assert r.durable_offset <= 30 and r.end_offset == 30
w.close()
r.close()
with tidelog.open(path) as again:
    assert again.end_offset == 30
    assert [bytes(x.value) for x in again.cursor(0)] == [val(i) for i in range(30)]
print("ok")
"""


@needs_fork
@pytest.mark.parametrize("variant,mode", [
    (v, m) for v in ("close", "exit", "append") for m in ("none", "batch", "always")
] + [("gc", "batch"), ("reader", "batch")])
def test_fork_child_never_disturbs_the_parent(tmp_path, variant, mode):
    # a child that closes, collects or exits with the parent's Log, or tries to write through
    # it: the parent's control page, records and lock are untouched (9cca872: the child's close
    # set durable_offset back from 20 to 10; its appends wrote over the parent's records)
    proc = run_python(FORK_CHILD, tmp_path / "log", variant, mode, check=False)
    assert proc.returncode == 0 and "ok" in proc.stdout, (
        f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}")
